//! keel's core: the decisions of a Binance WebSocket client and of a dynamic loss scaler, as
//! deterministic state machines.
//!
//! There is no networking code here, no timestamps from the operating system, no threads and no
//! async runtime. Time arrives as a [`time::Timestamp`] argument and randomness from a
//! [`rng::Rng`] seeded by the caller, so that the same seed and the same inputs always give the
//! same outputs: the simulator (`keel-sim`) and trace replay depend on that.

pub mod config;
pub mod rng;
pub mod time;
