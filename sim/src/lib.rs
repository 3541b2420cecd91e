//! corelog's deterministic simulator (TigerBeetle's VOPR and FoundationDB's simulator are
//! the models): N brokers run the replication core as madsim nodes over a simulated
//! network, with `SimDisk` storage; client nodes produce (acks=all) and read; faults are
//! drawn per seed; a checker reads the whole history.
//!
//! Everything lives behind `cfg(madsim)`: the plain build of this crate is only the
//! launcher in `main.rs`. See docs/internals/simulation.md.

#[cfg(madsim)]
pub mod checker;
#[cfg(madsim)]
pub mod cli;
#[cfg(madsim)]
pub mod harness;
#[cfg(madsim)]
mod wire;
