//! keel's core: the decisions of a Binance WebSocket client and of a dynamic loss scaler, as
//! deterministic state machines.
//!
//! There is no networking code here, no timestamps from the operating system, no threads and no
//! async runtime. Time arrives as a [`time::Timestamp`] argument and randomness from a
//! [`rng::Rng`] seeded by the caller, so that the same seed and the same inputs always give the
//! same outputs: the simulator (`keel-sim`) and trace replay depend on that.

pub mod backoff;
pub mod classify;
pub mod config;
pub mod connection;
pub mod gaps;
pub mod heartbeat;
pub mod monitor;
pub mod patterns;
pub mod protocol;
pub mod recovery;
pub mod redact;
pub mod rest;
pub mod rng;
pub mod scaler;
pub mod shard;
pub mod stats;
pub mod time;
pub mod trace;
