//! Helpers shared by the black-box test binaries.

pub mod app;
pub mod feed;
pub mod live;
pub mod pool;
pub mod redis;
pub mod serve;
