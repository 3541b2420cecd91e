//! DescribeUserScramCredentials (50) and AlterUserScramCredentials (51): SASL/SCRAM users
//! as cluster metadata (`kafka-configs.sh --alter --add-config 'SCRAM-SHA-256=[...]'`,
//! the admin clients' user_scram_credentials calls, `corelog user`). The client sends a
//! salted password, never the password; the broker keeps StoredKey and ServerKey.

use std::collections::BTreeSet;
use std::rc::Rc;

use corelog_replication::security::SecurityCommand;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::acl;
use crate::api::{Reply, respond};
use crate::coordinator::Client;
use crate::errors as code;
use crate::sasl::{Mechanism, ScramCredential};
use crate::shard::{AdminOp, AdminResult, Shard};

/// Kafka's bounds on a SCRAM credential's iteration count.
const MIN_ITERATIONS: i32 = 4096;
const MAX_ITERATIONS: i32 = 16384;

fn msg(m: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(m.into()))
}

fn denied(client: &Client, what: &str) -> (i16, String) {
    (
        code::CLUSTER_AUTHORIZATION_FAILED,
        format!("{} may not {what} SCRAM credentials", client.principal),
    )
}

pub fn describe(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DescribeUserScramCredentialsRequest,
    client: &Client,
) -> Reply {
    let mut resp = DescribeUserScramCredentialsResponse::default();
    if !shard.allowed_cluster(client, acl::op::DESCRIBE) {
        let (e, m) = denied(client, "describe");
        resp.error_code = e;
        resp.error_message = msg(m);
        return respond(c, version, &resp);
    }
    let users = shard.sasl_users();
    let info = |name: &str| {
        let mut r = DescribeUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(name.to_string()));
        match users.infos(name) {
            Some(infos) => {
                r.credential_infos = infos
                    .into_iter()
                    .filter_map(|(m, i)| {
                        Some(
                            CredentialInfo::default()
                                .with_mechanism(m.scram_code()? as i8)
                                .with_iterations(i as i32),
                        )
                    })
                    .collect();
            }
            None => {
                r.error_code = code::RESOURCE_NOT_FOUND;
                r.error_message = msg(format!("no SCRAM credential for user {name:?}"));
            }
        }
        r
    };
    resp.results = match req.users.filter(|u| !u.is_empty()) {
        None => users.names().iter().map(|n| info(n)).collect(),
        Some(asked) => {
            let mut seen = BTreeSet::new();
            let dup: BTreeSet<String> = asked
                .iter()
                .filter(|u| !seen.insert(u.name.to_string()))
                .map(|u| u.name.to_string())
                .collect();
            let mut done = BTreeSet::new();
            asked
                .iter()
                .map(|u| u.name.to_string())
                .filter(|n| done.insert(n.clone()))
                .map(|n| {
                    if dup.contains(&n) {
                        DescribeUserScramCredentialsResult::default()
                            .with_user(StrBytes::from_string(n))
                            .with_error_code(code::DUPLICATE_RESOURCE)
                            .with_error_message(msg("user named more than once"))
                    } else {
                        info(&n)
                    }
                })
                .collect()
        }
    };
    respond(c, version, &resp)
}

/// A checked alteration: the command to propose, or the error code and why not.
type Checked = Result<SecurityCommand, (i16, String)>;

/// One alteration checked.
fn check_upsert(u: &alter_user_scram_credentials_request::ScramCredentialUpsertion) -> Checked {
    let name = u.name.to_string();
    if name.is_empty() {
        return Err((
            code::UNACCEPTABLE_CREDENTIAL,
            "the user name is empty".into(),
        ));
    }
    let Some(m) = u8::try_from(u.mechanism)
        .ok()
        .and_then(Mechanism::from_scram_code)
    else {
        return Err((
            code::UNSUPPORTED_SASL_MECHANISM,
            format!("unknown SCRAM mechanism {}", u.mechanism),
        ));
    };
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&u.iterations) {
        return Err((
            code::UNACCEPTABLE_CREDENTIAL,
            format!(
                "iterations must be within {MIN_ITERATIONS}..={MAX_ITERATIONS}, not {}",
                u.iterations
            ),
        ));
    }
    let want = if m == Mechanism::ScramSha256 { 32 } else { 64 };
    if u.salt.is_empty() || u.salted_password.len() != want {
        return Err((
            code::UNACCEPTABLE_CREDENTIAL,
            format!(
                "a {} credential needs a salt and a {want}-byte salted password",
                m.name()
            ),
        ));
    }
    let cred =
        ScramCredential::from_salted(m, u.salt.to_vec(), u.iterations as u32, &u.salted_password);
    Ok(SecurityCommand::SetScramCredential {
        user: name,
        mechanism: m.scram_code().expect("a SCRAM mechanism"),
        credential: cred.stored(),
    })
}

pub async fn alter(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: AlterUserScramCredentialsRequest,
    client: &Client,
) -> Reply {
    let mut resp = AlterUserScramCredentialsResponse::default();
    let allowed = shard.allowed_cluster(client, acl::op::ALTER);
    // (user, mechanism, what to do). As Kafka: one answer per user; a (user, mechanism)
    // named twice refuses that user's alterations whole; the rest are carried out in
    // order, the first failure answered.
    let mut work: Vec<(String, i8, Checked)> = Vec::new();
    for d in &req.deletions {
        let cmd = match u8::try_from(d.mechanism)
            .ok()
            .and_then(Mechanism::from_scram_code)
        {
            Some(m) => Ok(SecurityCommand::DeleteScramCredential {
                user: d.name.to_string(),
                mechanism: m.scram_code().expect("a SCRAM mechanism"),
            }),
            None => Err((
                code::UNSUPPORTED_SASL_MECHANISM,
                format!("unknown SCRAM mechanism {}", d.mechanism),
            )),
        };
        work.push((d.name.to_string(), d.mechanism, cmd));
    }
    for u in &req.upsertions {
        work.push((u.name.to_string(), u.mechanism, check_upsert(u)));
    }
    let mut users: Vec<String> = Vec::new();
    let mut pairs = BTreeSet::new();
    let mut duplicated = BTreeSet::new();
    for (user, m, _) in &work {
        if !users.contains(user) {
            users.push(user.clone());
        }
        if !pairs.insert((user.clone(), *m)) {
            duplicated.insert(user.clone());
        }
    }
    for user in users {
        let outcome = if !allowed {
            Err(denied(client, "alter"))
        } else if duplicated.contains(&user) {
            Err((
                code::DUPLICATE_RESOURCE,
                "a user's mechanism may be altered once per request".to_string(),
            ))
        } else {
            let mut outcome = Ok(());
            for (_, _, cmd) in work.iter().filter(|(u, _, _)| *u == user) {
                let done = match cmd.clone() {
                    Err(e) => Err(e),
                    Ok(cmd) => match shard.admin(AdminOp::Security(cmd)).await {
                        AdminResult::Err(e, m) => Err((e, m)),
                        _ => Ok(()),
                    },
                };
                if done.is_err() {
                    outcome = done;
                    break;
                }
            }
            outcome
        };
        let mut r =
            AlterUserScramCredentialsResult::default().with_user(StrBytes::from_string(user));
        if let Err((e, m)) = outcome {
            r.error_code = e;
            r.error_message = msg(m);
        }
        resp.results.push(r);
    }
    respond(c, version, &resp)
}
