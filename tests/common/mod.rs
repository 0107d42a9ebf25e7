//! Helpers shared by the black-box test binaries.

pub mod sim_client;
