//! Kafka API handlers, one file per API (the ones in api.rs move here as they change).

pub mod create_partitions;
pub mod describe_log_dirs;
