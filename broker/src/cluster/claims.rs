//! Who leads the partitions this broker holds no replica of, and which brokers are up.
//!
//! Shard 0 of every broker announces, once a second and at once when one changes, the
//! groups it leads (a [`LeaderClaim`] each: epoch and ISR) to every peer, in an envelope
//! of its own (`Envelope::claims`). An announcement is the sender's whole set, so a group
//! it no longer names is no longer its. The shard that reads it relays it to the others,
//! and each keeps an index by group: Metadata answers from it for partitions without a
//! replica here, takes the leader's ISR from it for partitions this broker follows, and
//! names as offline the replicas on brokers not heard from for `SILENT_AFTER`.
//!
//! Claims are hints for clients, never Raft state: a stale one only sends a client to a
//! broker that answers NOT_LEADER_OR_FOLLOWER, and it asks again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use corelog_replication::{GroupId, LeaderClaim, NodeId, Term};

/// How often shard 0 announces its claims.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// A broker not heard from for this long is offline, and its claims stale.
pub const SILENT_AFTER: Duration = Duration::from_secs(5);

/// One leader's claim as indexed: (leader, epoch, isr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub leader: NodeId,
    pub epoch: Term,
    pub isr: Vec<NodeId>,
}

#[derive(Default)]
pub struct Claims {
    /// Each broker's latest announcement: when it came, and the groups it named.
    heard: HashMap<NodeId, (Instant, Vec<GroupId>)>,
    index: HashMap<GroupId, Claimed>,
}

impl Claims {
    /// Takes `from`'s whole set of claims, announced at `now`.
    pub fn update(&mut self, from: NodeId, claims: Vec<LeaderClaim>, now: Instant) {
        let fresh = |heard: &HashMap<NodeId, (Instant, Vec<GroupId>)>, n: NodeId| {
            heard
                .get(&n)
                .is_some_and(|(t, _)| now.duration_since(*t) < SILENT_AFTER)
        };
        if let Some((_, groups)) = self.heard.get(&from) {
            for g in groups {
                if self.index.get(g).is_some_and(|c| c.leader == from) {
                    self.index.remove(g);
                }
            }
        }
        let mut groups = Vec::with_capacity(claims.len());
        for c in claims {
            groups.push(c.group);
            let take = match self.index.get(&c.group) {
                None => true,
                // A newer term wins; so does any claim over one of a broker gone silent.
                Some(old) => old.epoch < c.epoch || !fresh(&self.heard, old.leader),
            };
            if take {
                self.index.insert(
                    c.group,
                    Claimed {
                        leader: from,
                        epoch: c.epoch,
                        isr: c.isr,
                    },
                );
            }
        }
        self.heard.insert(from, (now, groups));
    }

    /// The leader of `group` as last announced, if its announcer is still heard from.
    pub fn leader_of(&self, group: GroupId, now: Instant) -> Option<&Claimed> {
        self.index.get(&group).filter(|c| self.alive(c.leader, now))
    }

    /// Heard from within `SILENT_AFTER`.
    pub fn alive(&self, node: NodeId, now: Instant) -> bool {
        self.heard
            .get(&node)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < SILENT_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(group: GroupId, epoch: Term, isr: &[NodeId]) -> LeaderClaim {
        LeaderClaim {
            group,
            epoch,
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn newer_terms_win_and_silence_ages_claims_out() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        c.update(1, vec![claim(7, 3, &[1, 2, 3])], t0);
        assert_eq!(c.leader_of(7, t0).unwrap().leader, 1);
        // An older term's claim from another broker does not displace it.
        c.update(2, vec![claim(7, 2, &[2])], t0);
        assert_eq!(c.leader_of(7, t0).unwrap().leader, 1);
        // A newer one does.
        c.update(3, vec![claim(7, 4, &[3, 1])], t0);
        let l = c.leader_of(7, t0).unwrap();
        assert_eq!((l.leader, l.epoch, l.isr.clone()), (3, 4, vec![3, 1]));
        // Broker 3 goes silent: its claim is stale, broker 1 still alive.
        let later = t0 + SILENT_AFTER + Duration::from_millis(1);
        c.update(1, vec![], later - Duration::from_millis(1));
        assert!(c.leader_of(7, later).is_none());
        assert!(!c.alive(3, later) && c.alive(1, later));
    }

    #[test]
    fn a_group_left_out_of_an_announcement_is_no_longer_the_senders() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        c.update(1, vec![claim(7, 3, &[1]), claim(8, 1, &[1])], t0);
        c.update(1, vec![claim(8, 1, &[1])], t0);
        assert!(c.leader_of(7, t0).is_none());
        assert_eq!(c.leader_of(8, t0).unwrap().leader, 1);
        // Never heard of: not alive.
        assert!(!c.alive(9, t0));
    }
}
