//! Kafka's ACL model, pure: the wire codes of resource types, pattern types, operations
//! and permissions, the filters of DescribeAcls/DeleteAcls, and the authorizer
//! (Kafka's `StandardAuthorizer` rules):
//!
//! - super users may do everything;
//! - a Deny that matches wins over any Allow;
//! - Read, Write, Delete and Alter imply Describe; AlterConfigs implies DescribeConfigs;
//!   All covers every operation;
//! - a binding matches a resource by its literal name, the literal `*`, or a prefix;
//!   a principal `User:*` matches every principal, a host `*` every host;
//! - a resource that no binding names is denied, unless `allow_everyone_if_no_acl_found`.

use std::collections::BTreeSet;

use corelog_replication::security::AclBinding;
use serde::Deserialize;

pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

pub mod op {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The name of the one cluster resource, as Kafka names it.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The literal name that matches every resource of its type.
pub const WILDCARD: &str = "*";

/// Names of the codes, as kafka-acls.sh prints and takes them (case-insensitively).
pub const RESOURCE_NAMES: &[(i8, &str)] = &[
    (resource::ANY, "Any"),
    (resource::TOPIC, "Topic"),
    (resource::GROUP, "Group"),
    (resource::CLUSTER, "Cluster"),
    (resource::TRANSACTIONAL_ID, "TransactionalId"),
    (resource::DELEGATION_TOKEN, "DelegationToken"),
    (resource::USER, "User"),
];
pub const PATTERN_NAMES: &[(i8, &str)] = &[
    (pattern::ANY, "Any"),
    (pattern::MATCH, "Match"),
    (pattern::LITERAL, "Literal"),
    (pattern::PREFIXED, "Prefixed"),
];
pub const OP_NAMES: &[(i8, &str)] = &[
    (op::ANY, "Any"),
    (op::ALL, "All"),
    (op::READ, "Read"),
    (op::WRITE, "Write"),
    (op::CREATE, "Create"),
    (op::DELETE, "Delete"),
    (op::ALTER, "Alter"),
    (op::DESCRIBE, "Describe"),
    (op::CLUSTER_ACTION, "ClusterAction"),
    (op::DESCRIBE_CONFIGS, "DescribeConfigs"),
    (op::ALTER_CONFIGS, "AlterConfigs"),
    (op::IDEMPOTENT_WRITE, "IdempotentWrite"),
    (op::CREATE_TOKENS, "CreateTokens"),
    (op::DESCRIBE_TOKENS, "DescribeTokens"),
];
pub const PERMISSION_NAMES: &[(i8, &str)] = &[
    (permission::ANY, "Any"),
    (permission::DENY, "Deny"),
    (permission::ALLOW, "Allow"),
];

pub fn name_of<'a>(table: &[(i8, &'a str)], code: i8) -> &'a str {
    table
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("Unknown", |(_, n)| n)
}

pub fn code_of(table: &[(i8, &str)], name: &str) -> Option<i8> {
    let squash = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    let want = squash(name);
    table
        .iter()
        .find(|(_, n)| squash(n) == want)
        .map(|(c, _)| *c)
}

/// Checks a binding to be created: concrete values only (no Any, no Match), a principal
/// `Type:name`, a resource name, Cluster named `kafka-cluster`, an operation that applies
/// to the resource type.
pub fn validate_binding(b: &AclBinding) -> Result<(), String> {
    let concrete = |table: &[(i8, &str)], code: i8, what: &str| {
        if code <= 1 || name_of(table, code) == "Unknown" {
            Err(format!("{what} code {code} is not a concrete value"))
        } else {
            Ok(())
        }
    };
    concrete(RESOURCE_NAMES, b.resource_type, "resource type")?;
    concrete(OP_NAMES, b.operation, "operation")?;
    concrete(PERMISSION_NAMES, b.permission, "permission")?;
    if !matches!(b.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
        return Err(format!(
            "pattern type {} is not LITERAL or PREFIXED",
            b.pattern_type
        ));
    }
    if b.resource_name.is_empty() {
        return Err("the resource name is empty".into());
    }
    if b.pattern_type == pattern::PREFIXED && b.resource_name == WILDCARD {
        return Err("a PREFIXED pattern cannot be '*' (use LITERAL '*')".into());
    }
    if b.resource_type == resource::CLUSTER && b.resource_name != CLUSTER_NAME {
        return Err(format!(
            "the cluster resource is named '{CLUSTER_NAME}', not {:?}",
            b.resource_name
        ));
    }
    match b.principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
        _ => {
            return Err(format!(
                "principal {:?} is not of the form User:NAME",
                b.principal
            ));
        }
    }
    if b.host != WILDCARD && b.host.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("host {:?} is not '*' or an IP address", b.host));
    }
    if !ops_for(b.resource_type).contains(&b.operation) {
        return Err(format!(
            "operation {} does not apply to resource type {}",
            name_of(OP_NAMES, b.operation),
            name_of(RESOURCE_NAMES, b.resource_type)
        ));
    }
    Ok(())
}

/// The operations that mean something for a resource type (Kafka's AclEntry.supportedOperations).
fn ops_for(resource_type: i8) -> &'static [i8] {
    use op::*;
    match resource_type {
        resource::TOPIC => &[
            ALL,
            READ,
            WRITE,
            CREATE,
            DELETE,
            ALTER,
            DESCRIBE,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
        ],
        resource::GROUP => &[ALL, READ, DESCRIBE, DELETE],
        resource::CLUSTER => &[
            ALL,
            CREATE,
            CLUSTER_ACTION,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
            IDEMPOTENT_WRITE,
            ALTER,
            DESCRIBE,
        ],
        resource::TRANSACTIONAL_ID => &[ALL, DESCRIBE, WRITE],
        resource::DELEGATION_TOKEN => &[ALL, DESCRIBE],
        resource::USER => &[ALL, CREATE_TOKENS, DESCRIBE_TOKENS],
        _ => &[],
    }
}

/// A DescribeAcls/DeleteAcls filter (Kafka's AclBindingFilter): `None` fields match
/// anything; codes ANY match anything; pattern MATCH matches the bindings that would
/// apply to the named resource (literal, wildcard and prefixes).
#[derive(Debug, Clone)]
pub struct Filter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

impl Filter {
    pub fn validate(&self) -> Result<(), String> {
        let known = |table: &[(i8, &str)], code: i8, what: &str| {
            if name_of(table, code) == "Unknown" {
                Err(format!("unknown {what} code {code}"))
            } else {
                Ok(())
            }
        };
        known(RESOURCE_NAMES, self.resource_type, "resource type")?;
        known(PATTERN_NAMES, self.pattern_type, "pattern type")?;
        known(OP_NAMES, self.operation, "operation")?;
        known(PERMISSION_NAMES, self.permission, "permission")
    }

    pub fn matches(&self, b: &AclBinding) -> bool {
        let code = |want: i8, have: i8| want == 1 || want == have;
        let text = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if !(code(self.resource_type, b.resource_type)
            && code(self.operation, b.operation)
            && code(self.permission, b.permission)
            && text(&self.principal, &b.principal)
            && text(&self.host, &b.host))
        {
            return false;
        }
        match (self.pattern_type, &self.resource_name) {
            (pattern::MATCH, Some(name)) => names(b, name),
            (pattern::MATCH, None) | (pattern::ANY, None) => true,
            (pattern::ANY, Some(name)) => &b.resource_name == name,
            (p, name) => p == b.pattern_type && text(name, &b.resource_name),
        }
    }
}

/// Whether binding `b`'s pattern covers a resource called `name`.
fn names(b: &AclBinding, name: &str) -> bool {
    match b.pattern_type {
        pattern::LITERAL => b.resource_name == name || b.resource_name == WILDCARD,
        pattern::PREFIXED => name.starts_with(&b.resource_name),
        _ => false,
    }
}

/// `[authorization]` of the config (or `authorizer.class.name`, `super.users` and
/// `allow.everyone.if.no.acl.found` in server.properties).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// ACLs are enforced (off by default: every client may do everything).
    pub enabled: bool,
    /// Principals allowed everything, like `User:admin`.
    pub super_users: Vec<String>,
    /// Kafka's `allow.everyone.if.no.acl.found` (default false: no ACL, no access).
    pub allow_everyone_if_no_acl_found: bool,
}

/// Decides requests against the ACLs.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    pub enabled: bool,
    super_users: BTreeSet<String>,
    allow_if_none: bool,
    /// Until a cluster member first hears the controller's ACLs, only super users are let
    /// in: what it would allow from its empty copy is not what the cluster says.
    pending: bool,
    acls: Vec<AclBinding>,
}

impl Authorizer {
    pub fn new(cfg: &AuthorizationConfig, acls: &BTreeSet<AclBinding>, pending: bool) -> Self {
        Self {
            enabled: cfg.enabled,
            super_users: cfg
                .super_users
                .iter()
                .map(|s| s.trim().to_string())
                .collect(),
            allow_if_none: cfg.allow_everyone_if_no_acl_found,
            pending,
            acls: acls.iter().cloned().collect(),
        }
    }

    /// Whether this is a cluster member's stand-in before the controller's ACLs arrived.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// May `principal`, connected from `host` (an IP address), do `operation` on the
    /// resource of `resource_type` called `name`?
    pub fn allowed(
        &self,
        principal: &str,
        host: &str,
        operation: i8,
        resource_type: i8,
        name: &str,
    ) -> bool {
        if !self.enabled || self.super_users.contains(principal) {
            return true;
        }
        if self.pending {
            return false;
        }
        let mut named = false;
        let mut allow = false;
        for b in &self.acls {
            if b.resource_type != resource_type || !names(b, name) {
                continue;
            }
            named = true;
            if !(b.principal == principal || b.principal == "User:*")
                || !(b.host == WILDCARD || b.host == host)
            {
                continue;
            }
            if b.permission == permission::DENY {
                if b.operation == operation || b.operation == op::ALL {
                    return false;
                }
            } else if implies(b.operation, operation) {
                allow = true;
            }
        }
        allow || (!named && self.allow_if_none)
    }

    /// May the principal do `operation` on some resource of `resource_type`, given the
    /// ACLs (KIP-679: an idempotent producer needs Write on any topic)? A Deny on `*`
    /// wins; otherwise any Allow that is not denied literally.
    pub fn allowed_any(
        &self,
        principal: &str,
        host: &str,
        operation: i8,
        resource_type: i8,
    ) -> bool {
        if !self.enabled || self.super_users.contains(principal) {
            return true;
        }
        if self.pending {
            return false;
        }
        let applies = |b: &&AclBinding| {
            b.resource_type == resource_type
                && (b.principal == principal || b.principal == "User:*")
                && (b.host == WILDCARD || b.host == host)
        };
        let denied_everywhere = self.acls.iter().filter(applies).any(|b| {
            b.permission == permission::DENY
                && (b.operation == operation || b.operation == op::ALL)
                && b.pattern_type == pattern::LITERAL
                && b.resource_name == WILDCARD
        });
        if denied_everywhere {
            return false;
        }
        let granted = self
            .acls
            .iter()
            .filter(applies)
            .filter(|b| b.permission == permission::ALLOW && implies(b.operation, operation))
            .any(|b| {
                // An allow on a literal name that a deny names exactly grants nothing.
                !self.acls.iter().filter(applies).any(|d| {
                    d.permission == permission::DENY
                        && (d.operation == operation || d.operation == op::ALL)
                        && d.pattern_type == b.pattern_type
                        && d.resource_name == b.resource_name
                })
            });
        granted
            || (self.allow_if_none && !self.acls.iter().any(|b| b.resource_type == resource_type))
    }
}

/// Whether an Allow for `granted` lets one do `wanted`.
fn implies(granted: i8, wanted: i8) -> bool {
    granted == wanted
        || granted == op::ALL
        || (wanted == op::DESCRIBE
            && matches!(granted, op::READ | op::WRITE | op::DELETE | op::ALTER))
        || (wanted == op::DESCRIBE_CONFIGS && granted == op::ALTER_CONFIGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(rt: i8, name: &str, pt: i8, who: &str, operation: i8, perm: i8) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: who.into(),
            host: "*".into(),
            operation,
            permission: perm,
        }
    }

    fn authz(acls: Vec<AclBinding>) -> Authorizer {
        let cfg = AuthorizationConfig {
            enabled: true,
            super_users: vec!["User:admin".into()],
            allow_everyone_if_no_acl_found: false,
        };
        Authorizer::new(&cfg, &acls.into_iter().collect(), false)
    }

    const ALICE: &str = "User:alice";

    #[test]
    fn kafka_rules() {
        use op::*;
        let a = authz(vec![
            b(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                ALICE,
                WRITE,
                permission::ALLOW,
            ),
            b(
                resource::TOPIC,
                "logs-",
                pattern::PREFIXED,
                ALICE,
                READ,
                permission::ALLOW,
            ),
            b(
                resource::TOPIC,
                "logs-secret",
                pattern::LITERAL,
                ALICE,
                READ,
                permission::DENY,
            ),
            b(
                resource::TOPIC,
                "*",
                pattern::LITERAL,
                "User:*",
                DESCRIBE,
                permission::ALLOW,
            ),
            b(
                resource::GROUP,
                "g",
                pattern::LITERAL,
                ALICE,
                ALL,
                permission::ALLOW,
            ),
        ]);
        let t = resource::TOPIC;
        assert!(a.allowed(ALICE, "10.0.0.1", WRITE, t, "orders"));
        assert!(
            !a.allowed(ALICE, "10.0.0.1", READ, t, "orders"),
            "write is not read"
        );
        assert!(
            a.allowed(ALICE, "10.0.0.1", READ, t, "logs-new"),
            "the prefix covers new topics"
        );
        assert!(
            !a.allowed(ALICE, "10.0.0.1", READ, t, "logs-secret"),
            "deny wins"
        );
        assert!(
            a.allowed("User:bob", "h", DESCRIBE, t, "anything"),
            "User:* and '*'"
        );
        assert!(!a.allowed("User:bob", "h", WRITE, t, "orders"));
        assert!(
            a.allowed(ALICE, "h", READ, resource::GROUP, "g"),
            "All covers Read"
        );
        assert!(
            !a.allowed(ALICE, "h", READ, resource::GROUP, "other"),
            "no ACL, no access"
        );
        assert!(
            a.allowed("User:admin", "h", DELETE, t, "orders"),
            "super users"
        );
        // Write implies Describe.
        let w = authz(vec![b(
            t,
            "orders",
            pattern::LITERAL,
            ALICE,
            WRITE,
            permission::ALLOW,
        )]);
        assert!(w.allowed(ALICE, "h", DESCRIBE, t, "orders"));
        assert!(!w.allowed(ALICE, "h", DESCRIBE_CONFIGS, t, "orders"));
        // Host-specific.
        let mut hb = b(
            t,
            "orders",
            pattern::LITERAL,
            ALICE,
            READ,
            permission::ALLOW,
        );
        hb.host = "10.0.0.1".into();
        let h = authz(vec![hb]);
        assert!(h.allowed(ALICE, "10.0.0.1", READ, t, "orders"));
        assert!(!h.allowed(ALICE, "10.0.0.2", READ, t, "orders"));
    }

    #[test]
    fn disabled_pending_and_allow_if_none() {
        let off = Authorizer::default();
        assert!(off.allowed(ALICE, "h", op::DELETE, resource::TOPIC, "x"));
        let cfg = AuthorizationConfig {
            enabled: true,
            super_users: vec!["User:admin".into()],
            allow_everyone_if_no_acl_found: true,
        };
        let acls = [b(
            resource::TOPIC,
            "locked",
            pattern::LITERAL,
            "User:bob",
            op::READ,
            permission::ALLOW,
        )]
        .into_iter()
        .collect();
        let open = Authorizer::new(&cfg, &acls, false);
        assert!(open.allowed(ALICE, "h", op::READ, resource::TOPIC, "free"));
        assert!(!open.allowed(ALICE, "h", op::READ, resource::TOPIC, "locked"));
        let pending = Authorizer::new(&cfg, &acls, true);
        assert!(!pending.allowed(ALICE, "h", op::READ, resource::TOPIC, "free"));
        assert!(pending.allowed("User:admin", "h", op::READ, resource::TOPIC, "free"));
    }

    #[test]
    fn any_topic_for_idempotent_producers() {
        let t = resource::TOPIC;
        let a = authz(vec![b(
            t,
            "orders",
            pattern::LITERAL,
            ALICE,
            op::WRITE,
            permission::ALLOW,
        )]);
        assert!(a.allowed_any(ALICE, "h", op::WRITE, t));
        assert!(!a.allowed_any("User:bob", "h", op::WRITE, t));
        let d = authz(vec![
            b(
                t,
                "orders",
                pattern::LITERAL,
                ALICE,
                op::WRITE,
                permission::ALLOW,
            ),
            b(t, "*", pattern::LITERAL, ALICE, op::WRITE, permission::DENY),
        ]);
        assert!(
            !d.allowed_any(ALICE, "h", op::WRITE, t),
            "a deny on '*' wins"
        );
    }

    #[test]
    fn filters_and_validation() {
        let t = resource::TOPIC;
        let lit = b(
            t,
            "orders",
            pattern::LITERAL,
            ALICE,
            op::READ,
            permission::ALLOW,
        );
        let pre = b(
            t,
            "ord",
            pattern::PREFIXED,
            ALICE,
            op::READ,
            permission::ALLOW,
        );
        let all = Filter {
            resource_type: resource::ANY,
            resource_name: None,
            pattern_type: pattern::ANY,
            principal: None,
            host: None,
            operation: op::ANY,
            permission: permission::ANY,
        };
        assert!(all.matches(&lit) && all.matches(&pre));
        let matching = Filter {
            resource_type: t,
            resource_name: Some("orders".into()),
            pattern_type: pattern::MATCH,
            ..all.clone()
        };
        assert!(matching.matches(&lit) && matching.matches(&pre));
        let literal = Filter {
            pattern_type: pattern::LITERAL,
            ..matching.clone()
        };
        assert!(literal.matches(&lit) && !literal.matches(&pre));
        assert!(validate_binding(&lit).is_ok());
        let mut bad = lit.clone();
        bad.operation = op::CLUSTER_ACTION;
        assert!(
            validate_binding(&bad).is_err(),
            "ClusterAction is not a topic operation"
        );
        let mut bad = lit.clone();
        bad.principal = "alice".into();
        assert!(validate_binding(&bad).is_err());
        let mut bad = lit;
        bad.host = "not-an-ip".into();
        assert!(validate_binding(&bad).is_err());
        assert_eq!(
            code_of(OP_NAMES, "idempotent-write"),
            Some(op::IDEMPOTENT_WRITE)
        );
        assert_eq!(
            code_of(OP_NAMES, "DESCRIBE_CONFIGS"),
            Some(op::DESCRIBE_CONFIGS)
        );
    }
}
