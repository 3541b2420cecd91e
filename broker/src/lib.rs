//! The Kafka-compatible broker: glommio shards, the Kafka wire protocol, drivers that pump
//! the replication core.
//!
//! Not built yet: see issue 4. There is deliberately no `corelog` binary until it can serve.
