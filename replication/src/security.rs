//! Users (SCRAM credentials) and ACLs as cluster metadata: the commands that change them
//! and the one deterministic `apply` that both the controller log (on a cluster) and a
//! single broker's metadata file carry out, so the two cannot drift apart.
//!
//! Values are Kafka's wire codes (resource type, pattern type, operation, permission, SCRAM
//! mechanism); the broker checks them before it proposes a command, `apply` only keeps the
//! state consistent (a duplicate binding is one binding, deleting what is absent fails).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One ACL: who (`principal`, from `host`) may or may not (`permission`) do `operation` on
/// the resources `resource_name` names under `pattern_type` (literal or prefixed).
#[derive(
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// What the broker keeps of a SCRAM password (RFC 5802): never the password itself.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize, Deserialize, Clone, PartialEq, Eq,
)]
pub struct StoredCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for StoredCredential {
    // Keys stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredCredential {{ iterations: {} }}", self.iterations)
    }
}

/// A change to users or ACLs.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SecurityCommand {
    /// Creates or replaces `user`'s credential for one mechanism (Kafka's ScramMechanism
    /// code: 1 SCRAM-SHA-256, 2 SCRAM-SHA-512).
    SetScramCredential {
        user: String,
        mechanism: u8,
        credential: StoredCredential,
    },
    DeleteScramCredential {
        user: String,
        mechanism: u8,
    },
    CreateAcls {
        bindings: Vec<AclBinding>,
    },
    /// Removes exactly these bindings (the proposer resolved the filters).
    DeleteAcls {
        bindings: Vec<AclBinding>,
    },
}

/// Users and ACLs.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct SecurityMetadata {
    /// user -> mechanism code -> credential.
    pub credentials: BTreeMap<String, BTreeMap<u8, StoredCredential>>,
    pub acls: BTreeSet<AclBinding>,
}

impl SecurityMetadata {
    /// Applies one command; one that does not fit the state (deleting a credential that is
    /// not there) is refused identically everywhere and changes nothing.
    pub fn apply(&mut self, cmd: &SecurityCommand) -> Result<(), String> {
        match cmd {
            SecurityCommand::SetScramCredential {
                user,
                mechanism,
                credential,
            } => {
                self.credentials
                    .entry(user.clone())
                    .or_default()
                    .insert(*mechanism, credential.clone());
            }
            SecurityCommand::DeleteScramCredential { user, mechanism } => {
                let Some(by_mech) = self.credentials.get_mut(user) else {
                    return Err(format!("no credential for user {user:?}"));
                };
                if by_mech.remove(mechanism).is_none() {
                    return Err(format!(
                        "user {user:?} has no credential for mechanism {mechanism}"
                    ));
                }
                if by_mech.is_empty() {
                    self.credentials.remove(user);
                }
            }
            SecurityCommand::CreateAcls { bindings } => {
                self.acls.extend(bindings.iter().cloned());
            }
            SecurityCommand::DeleteAcls { bindings } => {
                for b in bindings {
                    self.acls.remove(b);
                }
            }
        }
        Ok(())
    }
}

impl SecurityMetadata {
    /// Whether this state shows `cmd` carried out (what a proposer waits for before it
    /// answers its client).
    pub fn reflects(&self, cmd: &SecurityCommand) -> bool {
        match cmd {
            SecurityCommand::SetScramCredential {
                user,
                mechanism,
                credential,
            } => self
                .credentials
                .get(user)
                .and_then(|m| m.get(mechanism))
                .is_some_and(|c| c == credential),
            SecurityCommand::DeleteScramCredential { user, mechanism } => self
                .credentials
                .get(user)
                .is_none_or(|m| !m.contains_key(mechanism)),
            SecurityCommand::CreateAcls { bindings } => {
                bindings.iter().all(|b| self.acls.contains(b))
            }
            SecurityCommand::DeleteAcls { bindings } => {
                bindings.iter().all(|b| !self.acls.contains(b))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(i: u32) -> StoredCredential {
        StoredCredential {
            salt: vec![1; 16],
            iterations: i,
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        }
    }

    fn binding(name: &str, op: i8) -> AclBinding {
        AclBinding {
            resource_type: 2,
            resource_name: name.into(),
            pattern_type: 3,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: op,
            permission: 3,
        }
    }

    #[test]
    fn credentials_are_set_replaced_and_deleted() {
        let mut s = SecurityMetadata::default();
        let set = |m, i| SecurityCommand::SetScramCredential {
            user: "alice".into(),
            mechanism: m,
            credential: cred(i),
        };
        s.apply(&set(1, 4096)).unwrap();
        s.apply(&set(2, 4096)).unwrap();
        assert!(!s.reflects(&set(1, 8192)));
        s.apply(&set(1, 8192)).unwrap();
        assert!(s.reflects(&set(1, 8192)));
        assert_eq!(s.credentials["alice"][&1].iterations, 8192);
        let del = |m| SecurityCommand::DeleteScramCredential {
            user: "alice".into(),
            mechanism: m,
        };
        s.apply(&del(1)).unwrap();
        assert!(s.apply(&del(1)).is_err(), "deleting twice is refused");
        s.apply(&del(2)).unwrap();
        assert!(
            s.credentials.is_empty(),
            "a user without credentials is gone"
        );
        assert!(s.apply(&del(2)).is_err());
    }

    #[test]
    fn acls_are_a_set() {
        let mut s = SecurityMetadata::default();
        s.apply(&SecurityCommand::CreateAcls {
            bindings: vec![binding("t", 3), binding("t", 3), binding("u", 4)],
        })
        .unwrap();
        assert_eq!(s.acls.len(), 2);
        s.apply(&SecurityCommand::DeleteAcls {
            bindings: vec![binding("t", 3), binding("absent", 3)],
        })
        .unwrap();
        assert_eq!(s.acls.iter().collect::<Vec<_>>(), vec![&binding("u", 4)]);
    }

    #[test]
    fn the_file_form_round_trips() {
        let mut s = SecurityMetadata::default();
        s.apply(&SecurityCommand::SetScramCredential {
            user: "bob".into(),
            mechanism: 2,
            credential: cred(4096),
        })
        .unwrap();
        s.apply(&SecurityCommand::CreateAcls {
            bindings: vec![binding("t", 3)],
        })
        .unwrap();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SecurityMetadata>(&text).unwrap(), s);
    }
}
