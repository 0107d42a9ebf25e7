//! The HTTP API (being assembled).

pub mod error;
pub mod params;
pub mod stream_id;
