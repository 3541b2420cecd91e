//! The sans-IO replication core (Raft per partition, with the Kafka log as the Raft log).
//!
//! Not built yet: see issue 3. This crate exists so the workspace has its final shape; it
//! must never depend on glommio, madsim, tokio, the clock or the filesystem.
