//! DescribeAcls (29), CreateAcls (30), DeleteAcls (31): ACLs as cluster metadata
//! (`kafka-acls.sh`, the admin clients' create_acls/describe_acls/delete_acls, `corelog
//! acl`). Describing needs Describe on the cluster, changing Alter; while authorization is
//! off they answer SECURITY_DISABLED, as Kafka does without an authorizer.

use std::collections::BTreeMap;
use std::rc::Rc;

use corelog_replication::security::{AclBinding, SecurityCommand};
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::acl::{self, Filter};
use crate::api::{Reply, respond};
use crate::coordinator::Client;
use crate::errors as code;
use crate::shard::{AdminOp, AdminResult, Shard};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn msg(m: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(m.into()))
}

/// Why a request cannot be served here, if it cannot: authorization off, or not allowed.
fn refusal(shard: &Shard, client: &Client, operation: i8) -> Option<(i16, String)> {
    if !shard.security.borrow().authorizer.enabled {
        return Some((
            code::SECURITY_DISABLED,
            "no authorizer is configured on this broker ([authorization] enabled = true)".into(),
        ));
    }
    if !shard.allowed_cluster(client, operation) {
        return Some((
            code::CLUSTER_AUTHORIZATION_FAILED,
            format!(
                "{} may not {} the cluster's ACLs",
                client.principal,
                acl::name_of(acl::OP_NAMES, operation)
            ),
        ));
    }
    None
}

pub fn describe(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DescribeAclsRequest,
    client: &Client,
) -> Reply {
    let mut resp = DescribeAclsResponse::default();
    if let Some((error, m)) = refusal(shard, client, acl::op::DESCRIBE) {
        resp.error_code = error;
        resp.error_message = msg(m);
        return respond(c, version, &resp);
    }
    let filter = Filter {
        resource_type: req.resource_type_filter,
        resource_name: req.resource_name_filter.map(|n| n.to_string()),
        pattern_type: req.pattern_type_filter,
        principal: req.principal_filter.map(|n| n.to_string()),
        host: req.host_filter.map(|n| n.to_string()),
        operation: req.operation,
        permission: req.permission_type,
    };
    if let Err(e) = filter.validate() {
        resp.error_code = code::INVALID_REQUEST;
        resp.error_message = msg(e);
        return respond(c, version, &resp);
    }
    // Grouped by resource pattern, as Kafka answers.
    let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for b in shard
        .security
        .borrow()
        .meta
        .acls
        .iter()
        .filter(|b| filter.matches(b))
    {
        by_resource
            .entry((b.resource_type, b.resource_name.clone(), b.pattern_type))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(s(&b.principal))
                    .with_host(s(&b.host))
                    .with_operation(b.operation)
                    .with_permission_type(b.permission),
            );
    }
    resp.resources = by_resource
        .into_iter()
        .map(|((rt, name, pt), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(rt)
                .with_resource_name(s(&name))
                .with_pattern_type(pt)
                .with_acls(acls)
        })
        .collect();
    respond(c, version, &resp)
}

pub async fn create(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: CreateAclsRequest,
    client: &Client,
) -> Reply {
    let mut resp = CreateAclsResponse::default();
    let refused = refusal(shard, client, acl::op::ALTER);
    let mut valid = Vec::new();
    // Each creation answered on its own: a bad one does not stop the others.
    let mut results: Vec<Result<usize, (i16, String)>> = Vec::new();
    for a in req.creations {
        let b = AclBinding {
            resource_type: a.resource_type,
            resource_name: a.resource_name.to_string(),
            pattern_type: a.resource_pattern_type,
            principal: a.principal.to_string(),
            host: a.host.to_string(),
            operation: a.operation,
            permission: a.permission_type,
        };
        results.push(match &refused {
            Some(r) => Err(r.clone()),
            None => match acl::validate_binding(&b) {
                Ok(()) => {
                    valid.push(b);
                    Ok(valid.len() - 1)
                }
                Err(e) => Err((code::INVALID_REQUEST, e)),
            },
        });
    }
    let outcome = if valid.is_empty() {
        Ok(())
    } else {
        match shard
            .admin(AdminOp::Security(SecurityCommand::CreateAcls {
                bindings: valid,
            }))
            .await
        {
            AdminResult::Err(e, m) => Err((e, m)),
            _ => Ok(()),
        }
    };
    resp.results = results
        .into_iter()
        .map(|r| match r.and_then(|_| outcome.clone()) {
            Ok(()) => AclCreationResult::default(),
            Err((e, m)) => AclCreationResult::default()
                .with_error_code(e)
                .with_error_message(msg(m)),
        })
        .collect();
    respond(c, version, &resp)
}

pub async fn delete(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DeleteAclsRequest,
    client: &Client,
) -> Reply {
    let mut resp = DeleteAclsResponse::default();
    let refused = refusal(shard, client, acl::op::ALTER);
    let mut matched: Vec<Result<Vec<AclBinding>, (i16, String)>> = Vec::new();
    for f in req.filters {
        let filter = Filter {
            resource_type: f.resource_type_filter,
            resource_name: f.resource_name_filter.map(|n| n.to_string()),
            pattern_type: f.pattern_type_filter,
            principal: f.principal_filter.map(|n| n.to_string()),
            host: f.host_filter.map(|n| n.to_string()),
            operation: f.operation,
            permission: f.permission_type,
        };
        matched.push(match (&refused, filter.validate()) {
            (Some(r), _) => Err(r.clone()),
            (None, Err(e)) => Err((code::INVALID_REQUEST, e)),
            (None, Ok(())) => Ok(shard
                .security
                .borrow()
                .meta
                .acls
                .iter()
                .filter(|b| filter.matches(b))
                .cloned()
                .collect()),
        });
    }
    let mut all: Vec<AclBinding> = matched.iter().flatten().flatten().cloned().collect();
    all.sort();
    all.dedup();
    let outcome = if all.is_empty() {
        Ok(())
    } else {
        match shard
            .admin(AdminOp::Security(SecurityCommand::DeleteAcls {
                bindings: all,
            }))
            .await
        {
            AdminResult::Err(e, m) => Err((e, m)),
            _ => Ok(()),
        }
    };
    resp.filter_results = matched
        .into_iter()
        .map(|m| match m.and_then(|b| outcome.clone().map(|()| b)) {
            Ok(bindings) => DeleteAclsFilterResult::default().with_matching_acls(
                bindings
                    .iter()
                    .map(|b| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.resource_type)
                            .with_resource_name(s(&b.resource_name))
                            .with_pattern_type(b.pattern_type)
                            .with_principal(s(&b.principal))
                            .with_host(s(&b.host))
                            .with_operation(b.operation)
                            .with_permission_type(b.permission)
                    })
                    .collect(),
            ),
            Err((e, m)) => DeleteAclsFilterResult::default()
                .with_error_code(e)
                .with_error_message(msg(m)),
        })
        .collect();
    respond(c, version, &resp)
}
