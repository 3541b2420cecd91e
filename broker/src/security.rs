//! A shard's copy of users and ACLs: the cluster metadata's (the controller log on a
//! cluster, `cluster-meta.json` alone) joined with the config's, swapped whole when shard 0
//! says they changed (`ShardMsg::Security`), and the questions handlers ask of it.

use std::net::IpAddr;
use std::sync::Arc;

use corelog_replication::security::SecurityMetadata;

use crate::acl::{self, Authorizer};
use crate::config::Config;
use crate::sasl::Users;

/// Users and ACLs as one shard sees them.
pub struct Security {
    pub meta: SecurityMetadata,
    pub authorizer: Authorizer,
    /// The config's users with the metadata's.
    pub users: Arc<Users>,
}

impl Security {
    /// `pending`: a cluster member that has not heard the controller yet.
    pub fn new(cfg: &Config, config_users: &Users, meta: SecurityMetadata, pending: bool) -> Self {
        Self {
            authorizer: Authorizer::new(&cfg.authorization, &meta.acls, pending),
            users: Arc::new(config_users.with_metadata(&meta.credentials)),
            meta,
        }
    }
}

/// Who a client is: `User:NAME` after SASL, `User:` and the certificate's subject for a
/// client certificate (Kafka's default `ssl.principal.mapping.rules`), else `User:ANONYMOUS`.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// The address an ACL's host is compared with: an IPv4 client of a dual-stack listener is
/// its IPv4 address, as Kafka sees it.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The principal of a client certificate (DER): `User:` and its subject in RFC 2253 form
/// (last RDN first, `,` between them, special characters escaped), which is what Kafka's
/// default mapping rule (`DEFAULT`) makes of `X500Principal.getName()`.
pub fn certificate_principal(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let key = match oid.to_id_string().as_str() {
                "2.5.4.3" => "CN".to_string(),
                "2.5.4.6" => "C".to_string(),
                "2.5.4.7" => "L".to_string(),
                "2.5.4.8" => "ST".to_string(),
                "2.5.4.10" => "O".to_string(),
                "2.5.4.11" => "OU".to_string(),
                "2.5.4.9" => "STREET".to_string(),
                "0.9.2342.19200300.100.1.25" => "DC".to_string(),
                "0.9.2342.19200300.100.1.1" => "UID".to_string(),
                other => other.to_string(),
            };
            let value = attr.as_str().ok()?;
            parts.push(format!("{key}={}", escape_rfc2253(value)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(format!("User:{}", rdns.join(",")))
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == v.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl crate::shard::Shard {
    /// Whether `client` may do `operation` on the resource `name` of `resource_type`.
    pub fn allowed(
        &self,
        client: &crate::coordinator::Client,
        operation: i8,
        resource_type: i8,
        name: &str,
    ) -> bool {
        let s = self.security.borrow();
        !s.authorizer.enabled
            || s.authorizer.allowed(
                &client.principal,
                client.ip(),
                operation,
                resource_type,
                name,
            )
    }

    /// [`Self::allowed`] on the cluster resource.
    pub fn allowed_cluster(&self, client: &crate::coordinator::Client, operation: i8) -> bool {
        self.allowed(client, operation, acl::resource::CLUSTER, acl::CLUSTER_NAME)
    }

    /// Whether `client` may do `operation` on some resource of `resource_type` (KIP-679).
    pub fn allowed_any(
        &self,
        client: &crate::coordinator::Client,
        operation: i8,
        resource_type: i8,
    ) -> bool {
        let s = self.security.borrow();
        s.authorizer
            .allowed_any(&client.principal, client.ip(), operation, resource_type)
    }

    /// Topic `name` may be created by `client`: Create on the cluster or on the topic.
    pub fn may_create_topic(&self, client: &crate::coordinator::Client, name: &str) -> bool {
        self.allowed_cluster(client, acl::op::CREATE)
            || self.allowed(client, acl::op::CREATE, acl::resource::TOPIC, name)
    }

    pub fn sasl_users(&self) -> Arc<Users> {
        self.security.borrow().users.clone()
    }

    /// Takes in new users and ACLs (from shard 0).
    pub fn set_security(&self, meta: SecurityMetadata) {
        let s = Security::new(&self.cfg, &self.config_users, meta, false);
        *self.security.borrow_mut() = std::rc::Rc::new(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(mapped).to_string(), "10.1.2.3");
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }

    /// `openssl req -subj "/C=US/O=corelog, inc/OU=ops/CN=alice"`: its subject the way
    /// `openssl x509 -nameopt RFC2253` and Java's X500Principal print it.
    #[test]
    fn a_certificate_subject_is_its_principal() {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode("MIIB2DCCAX+gAwIBAgIUacCOgjg81FqZ6lbqFyxBtKWnrKUwCgYIKoZIzj0EAwIwQjELMAkGA1UEBhMCVVMxFTATBgNVBAoMDGNvcmVsb2csIGluYzEMMAoGA1UECwwDb3BzMQ4wDAYDVQQDDAVhbGljZTAeFw0yNjEyMDcwNTUwMjBaFw0zNjEyMDQwNTUwMjBaMEIxCzAJBgNVBAYTAlVTMRUwEwYDVQQKDAxjb3JlbG9nLCBpbmMxDDAKBgNVBAsMA29wczEOMAwGA1UEAwwFYWxpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASNg2SQ3xEDE3sGqkTs+FKe4A/v8RVg2napmCf3+G94+1OVb9Wu1Zjecu84pA0Ytv2u23v2iFlKaj1MDZlGmddSo1MwUTAdBgNVHQ4EFgQUeVsLX8yYzhH4EuwqmI2eCPU+IFgwHwYDVR0jBBgwFoAUeVsLX8yYzhH4EuwqmI2eCPU+IFgwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiAHwOjX2rZULO6Z7zW0MDgaEC1zhEeQ5hhpwGnUO+wJDgIgRnJSxRbTBJUwUJTwWNIRVlT9oVauT57k+nIVttJpBG0=")
            .unwrap();
        assert_eq!(
            certificate_principal(&der).as_deref(),
            Some("User:CN=alice,OU=ops,O=corelog\\, inc,C=US")
        );
        assert_eq!(certificate_principal(b"not a certificate"), None);
    }

    #[test]
    fn rfc_2253_escapes() {
        assert_eq!(escape_rfc2253("a,b"), "a\\,b");
        assert_eq!(escape_rfc2253(" x "), "\\ x\\ ");
        assert_eq!(escape_rfc2253("plain"), "plain");
    }
}
