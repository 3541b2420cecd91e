//! corelog's Kafka-compatible broker. See docs/ARCHITECTURE.md for the request path.

pub mod admin;
pub mod api;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod coordinator;
pub mod disk_space;
pub mod errors;
pub mod frame;
pub mod group;
pub mod handlers;
pub mod limits;
pub mod partition;
pub mod properties;
pub mod recent;
pub mod records;
pub mod sasl;
pub mod server;
pub mod shard;
pub mod tls;
pub mod topic_configs;
pub mod topics;
pub mod util;
pub mod wire;
