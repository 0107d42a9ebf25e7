//! Helpers shared by the simulator's test binaries.

pub mod harness;
pub mod sim_client;
