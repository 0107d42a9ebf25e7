//! Helpers shared by the simulator's test binaries.

pub mod sim_client;
