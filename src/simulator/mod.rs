//! The upstream simulator (being built: see issue 2).

use crate::config::Settings;

pub fn run_standalone(_settings: Settings) -> std::io::Result<()> {
    Err(std::io::Error::other("the simulator is not built yet"))
}
