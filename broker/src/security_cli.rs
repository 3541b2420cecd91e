//! `corelog user` and `corelog acl`: SCRAM users and ACLs through the Kafka API, as
//! `kafka-configs.sh --entity-type users` and `kafka-acls.sh` manage them. Changes go to
//! the controller (found through Metadata); the password never leaves this process, only
//! its salted form (AlterUserScramCredentials).

use clap::{Args, Subcommand};
use corelog_replication::security::AclBinding;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::acl::{self, OP_NAMES, PATTERN_NAMES, PERMISSION_NAMES, RESOURCE_NAMES, name_of};
use crate::admin::Client;
use crate::errors;
use crate::sasl::{ITERATIONS, Mechanism, ScramCredential};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn check(error: i16, message: Option<&StrBytes>, what: &str) -> Result<(), String> {
    if error == 0 {
        return Ok(());
    }
    Err(format!(
        "{what}: {}{}",
        errors::name(error),
        message.map(|m| format!(": {m}")).unwrap_or_default()
    ))
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a SCRAM user, or give an existing one a new password. The password is read
    /// from the terminal without echo, or from standard input's first line.
    Create {
        name: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512 (repeatable; default both).
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
        #[arg(long, default_value_t = ITERATIONS)]
        iterations: u32,
    },
    /// List the users and their mechanisms.
    List,
    /// Delete a user's credentials (all mechanisms, or the ones named).
    Delete {
        name: String,
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
    },
}

fn mechanism(name: &str) -> Result<Mechanism, String> {
    Mechanism::parse(name)
        .filter(|m| m.scram_code().is_some())
        .ok_or_else(|| format!("mechanism {name:?}: SCRAM-SHA-256 or SCRAM-SHA-512"))
}

/// Reads a password: from the terminal without echo (asked twice), else stdin's first line.
fn read_password(user: &str) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let p = line.trim_end_matches(['\n', '\r']).to_string();
        return if p.is_empty() {
            Err("no password on standard input".into())
        } else {
            Ok(p)
        };
    }
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let fd = std::io::stdin();
    let saved = tcgetattr(&fd).map_err(|e| e.to_string())?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    let ask = |prompt: &str| -> Result<String, String> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        tcsetattr(&fd, SetArg::TCSANOW, &quiet).map_err(|e| e.to_string())?;
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        let _ = tcsetattr(&fd, SetArg::TCSANOW, &saved);
        eprintln!();
        read.map_err(|e| e.to_string())?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = ask(&format!("Password for {user}: "))?;
    if first.is_empty() {
        return Err("empty password".into());
    }
    if ask("Again: ")? != first {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

pub fn user(bootstrap: &str, cmd: UserCmd) -> Result<(), String> {
    match cmd {
        UserCmd::Create {
            name,
            mechanisms,
            iterations,
        } => {
            let ms: Vec<Mechanism> = if mechanisms.is_empty() {
                vec![Mechanism::ScramSha256, Mechanism::ScramSha512]
            } else {
                mechanisms
                    .iter()
                    .map(|m| mechanism(m))
                    .collect::<Result<_, _>>()?
            };
            let password = read_password(&name)?;
            let mut upsertions = Vec::new();
            for m in ms {
                let (salt, salted) = ScramCredential::salt_password(m, &password, iterations)?;
                upsertions.push(
                    ScramCredentialUpsertion::default()
                        .with_name(s(&name))
                        .with_mechanism(m.scram_code().expect("SCRAM") as i8)
                        .with_iterations(iterations as i32)
                        .with_salt(salt.into())
                        .with_salted_password(salted.into()),
                );
            }
            let mut c = Client::to_controller(bootstrap)?;
            let req = AlterUserScramCredentialsRequest::default().with_upsertions(upsertions);
            let resp = c.call(&req, 0)?;
            for r in &resp.results {
                check(
                    r.error_code,
                    r.error_message.as_ref(),
                    &format!("user {name}"),
                )?;
            }
            println!("user {name} saved");
            Ok(())
        }
        UserCmd::List => {
            let mut c = Client::connect(bootstrap)?;
            let resp = c.call(&DescribeUserScramCredentialsRequest::default(), 0)?;
            check(resp.error_code, resp.error_message.as_ref(), "list users")?;
            for r in &resp.results {
                let ms: Vec<String> = r
                    .credential_infos
                    .iter()
                    .map(|i| {
                        let m = Mechanism::from_scram_code(i.mechanism as u8)
                            .map_or("unknown", Mechanism::name);
                        format!("{m} (iterations {})", i.iterations)
                    })
                    .collect();
                println!("{}\t{}", r.user, ms.join(", "));
            }
            Ok(())
        }
        UserCmd::Delete { name, mechanisms } => {
            let mut c = Client::to_controller(bootstrap)?;
            let codes: Vec<i8> = if mechanisms.is_empty() {
                let req = DescribeUserScramCredentialsRequest::default()
                    .with_users(Some(vec![UserName::default().with_name(s(&name))]));
                let resp = c.call(&req, 0)?;
                check(
                    resp.error_code,
                    resp.error_message.as_ref(),
                    "describe user",
                )?;
                let r = resp.results.first().ok_or("no answer for the user")?;
                check(
                    r.error_code,
                    r.error_message.as_ref(),
                    &format!("user {name}"),
                )?;
                r.credential_infos.iter().map(|i| i.mechanism).collect()
            } else {
                mechanisms
                    .iter()
                    .map(|m| mechanism(m).map(|m| m.scram_code().expect("SCRAM") as i8))
                    .collect::<Result<_, _>>()?
            };
            let deletions = codes
                .into_iter()
                .map(|m| {
                    ScramCredentialDeletion::default()
                        .with_name(s(&name))
                        .with_mechanism(m)
                })
                .collect();
            let req = AlterUserScramCredentialsRequest::default().with_deletions(deletions);
            let resp = c.call(&req, 0)?;
            for r in &resp.results {
                check(
                    r.error_code,
                    r.error_message.as_ref(),
                    &format!("user {name}"),
                )?;
            }
            println!("user {name} deleted");
            Ok(())
        }
    }
}

/// kafka-acls.sh's options.
#[derive(Args, Clone, Default)]
pub struct AclArgs {
    /// Principals to allow, like User:alice (repeatable).
    #[arg(long = "allow-principal")]
    allow_principals: Vec<String>,
    /// Principals to deny (repeatable).
    #[arg(long = "deny-principal")]
    deny_principals: Vec<String>,
    /// Hosts (IP addresses) the allow applies from; default every host.
    #[arg(long = "allow-host")]
    allow_hosts: Vec<String>,
    #[arg(long = "deny-host")]
    deny_hosts: Vec<String>,
    /// Operations: Read, Write, Create, Delete, Alter, Describe, ClusterAction,
    /// DescribeConfigs, AlterConfigs, IdempotentWrite, All (repeatable).
    #[arg(long = "operation")]
    operations: Vec<String>,
    #[arg(long = "topic")]
    topics: Vec<String>,
    #[arg(long = "group")]
    groups: Vec<String>,
    #[arg(long = "transactional-id")]
    transactional_ids: Vec<String>,
    #[arg(long)]
    cluster: bool,
    /// literal (default) or prefixed; for list and delete also any and match.
    #[arg(long = "resource-pattern-type")]
    pattern: Option<String>,
    /// list/delete: only the bindings of this principal.
    #[arg(long)]
    principal: Option<String>,
}

#[derive(Subcommand)]
pub enum AclCmd {
    /// Add ACLs (kafka-acls.sh --add).
    Create(AclArgs),
    /// List ACLs, all or those of the resources and principal named (--list).
    List(AclArgs),
    /// Remove the ACLs that match (--remove).
    Delete(AclArgs),
}

impl AclArgs {
    fn resources(&self) -> Vec<(i8, String)> {
        let mut r = Vec::new();
        r.extend(
            self.topics
                .iter()
                .map(|t| (acl::resource::TOPIC, t.clone())),
        );
        r.extend(
            self.groups
                .iter()
                .map(|g| (acl::resource::GROUP, g.clone())),
        );
        r.extend(
            self.transactional_ids
                .iter()
                .map(|t| (acl::resource::TRANSACTIONAL_ID, t.clone())),
        );
        if self.cluster {
            r.push((acl::resource::CLUSTER, acl::CLUSTER_NAME.to_string()));
        }
        r
    }

    fn pattern(&self, default: i8) -> Result<i8, String> {
        match &self.pattern {
            None => Ok(default),
            Some(p) => acl::code_of(PATTERN_NAMES, p).ok_or_else(|| {
                format!("--resource-pattern-type {p}: literal, prefixed, match or any")
            }),
        }
    }

    fn operations(&self, default: i8) -> Result<Vec<i8>, String> {
        if self.operations.is_empty() {
            return Ok(vec![default]);
        }
        self.operations
            .iter()
            .map(|o| acl::code_of(OP_NAMES, o).ok_or_else(|| format!("--operation {o}: unknown")))
            .collect()
    }

    /// (principal, host, permission) of every allow and deny named.
    fn grants(&self) -> Vec<(String, String, i8)> {
        let hosts = |h: &Vec<String>| {
            if h.is_empty() {
                vec![acl::WILDCARD.to_string()]
            } else {
                h.clone()
            }
        };
        let mut out = Vec::new();
        for p in &self.allow_principals {
            for h in hosts(&self.allow_hosts) {
                out.push((p.clone(), h, acl::permission::ALLOW));
            }
        }
        for p in &self.deny_principals {
            for h in hosts(&self.deny_hosts) {
                out.push((p.clone(), h, acl::permission::DENY));
            }
        }
        out
    }

    /// The filters of list/delete: per resource (or any), per principal given (or any).
    fn filters(&self) -> Result<Vec<DeleteAclsFilter>, String> {
        let pattern = self.pattern(if self.resources().is_empty() {
            acl::pattern::ANY
        } else {
            acl::pattern::LITERAL
        })?;
        let resources: Vec<(i8, Option<String>)> = if self.resources().is_empty() {
            vec![(acl::resource::ANY, None)]
        } else {
            self.resources()
                .into_iter()
                .map(|(t, n)| (t, Some(n)))
                .collect()
        };
        let grants: Vec<(Option<String>, Option<String>, i8)> = if self.grants().is_empty() {
            vec![(self.principal.clone(), None, acl::permission::ANY)]
        } else {
            self.grants()
                .into_iter()
                .map(|(p, h, perm)| (Some(p), Some(h), perm))
                .collect()
        };
        let ops = self.operations(acl::op::ANY)?;
        let mut out = Vec::new();
        for (rt, name) in &resources {
            for (principal, host, perm) in &grants {
                for op in &ops {
                    out.push(
                        DeleteAclsFilter::default()
                            .with_resource_type_filter(*rt)
                            .with_resource_name_filter(name.as_deref().map(s))
                            .with_pattern_type_filter(pattern)
                            .with_principal_filter(principal.as_deref().map(s))
                            .with_host_filter(host.as_deref().map(s))
                            .with_operation(*op)
                            .with_permission_type(*perm),
                    );
                }
            }
        }
        Ok(out)
    }
}

fn show(b: &AclBinding) -> String {
    format!(
        "{}:{}:{}\t(principal={}, host={}, operation={}, permissionType={})",
        name_of(RESOURCE_NAMES, b.resource_type),
        name_of(PATTERN_NAMES, b.pattern_type).to_uppercase(),
        b.resource_name,
        b.principal,
        b.host,
        name_of(OP_NAMES, b.operation),
        name_of(PERMISSION_NAMES, b.permission),
    )
}

pub fn acl_cmd(bootstrap: &str, cmd: AclCmd) -> Result<(), String> {
    match cmd {
        AclCmd::Create(a) => {
            let resources = a.resources();
            if resources.is_empty() {
                return Err(
                    "name a resource: --topic, --group, --transactional-id or --cluster".into(),
                );
            }
            if a.grants().is_empty() {
                return Err("name a principal: --allow-principal or --deny-principal".into());
            }
            let pattern = a.pattern(acl::pattern::LITERAL)?;
            let mut bindings = Vec::new();
            for (rt, name) in &resources {
                for (principal, host, perm) in a.grants() {
                    for op in a.operations(acl::op::ALL)? {
                        bindings.push(AclBinding {
                            resource_type: *rt,
                            resource_name: name.clone(),
                            pattern_type: pattern,
                            principal: principal.clone(),
                            host: host.clone(),
                            operation: op,
                            permission: perm,
                        });
                    }
                }
            }
            let creations = bindings
                .iter()
                .map(|b| {
                    AclCreation::default()
                        .with_resource_type(b.resource_type)
                        .with_resource_name(s(&b.resource_name))
                        .with_resource_pattern_type(b.pattern_type)
                        .with_principal(s(&b.principal))
                        .with_host(s(&b.host))
                        .with_operation(b.operation)
                        .with_permission_type(b.permission)
                })
                .collect();
            let mut c = Client::to_controller(bootstrap)?;
            let resp = c.call(&CreateAclsRequest::default().with_creations(creations), 2)?;
            for (b, r) in bindings.iter().zip(&resp.results) {
                check(r.error_code, r.error_message.as_ref(), &show(b))?;
                println!("added {}", show(b));
            }
            Ok(())
        }
        AclCmd::List(a) => {
            let mut c = Client::connect(bootstrap)?;
            for f in a.filters()? {
                let req = DescribeAclsRequest::default()
                    .with_resource_type_filter(f.resource_type_filter)
                    .with_resource_name_filter(f.resource_name_filter)
                    .with_pattern_type_filter(f.pattern_type_filter)
                    .with_principal_filter(f.principal_filter)
                    .with_host_filter(f.host_filter)
                    .with_operation(f.operation)
                    .with_permission_type(f.permission_type);
                let resp = c.call(&req, 2)?;
                check(resp.error_code, resp.error_message.as_ref(), "list ACLs")?;
                for r in &resp.resources {
                    for d in &r.acls {
                        println!(
                            "{}",
                            show(&AclBinding {
                                resource_type: r.resource_type,
                                resource_name: r.resource_name.to_string(),
                                pattern_type: r.pattern_type,
                                principal: d.principal.to_string(),
                                host: d.host.to_string(),
                                operation: d.operation,
                                permission: d.permission_type,
                            })
                        );
                    }
                }
            }
            Ok(())
        }
        AclCmd::Delete(a) => {
            let mut c = Client::to_controller(bootstrap)?;
            let resp = c.call(&DeleteAclsRequest::default().with_filters(a.filters()?), 2)?;
            let mut n = 0;
            for r in &resp.filter_results {
                check(r.error_code, r.error_message.as_ref(), "delete ACLs")?;
                for m in &r.matching_acls {
                    n += 1;
                    println!(
                        "removed {}",
                        show(&AclBinding {
                            resource_type: m.resource_type,
                            resource_name: m.resource_name.to_string(),
                            pattern_type: m.pattern_type,
                            principal: m.principal.to_string(),
                            host: m.host.to_string(),
                            operation: m.operation,
                            permission: m.permission_type,
                        })
                    );
                }
            }
            if n == 0 {
                println!("no ACL matched");
            }
            Ok(())
        }
    }
}
