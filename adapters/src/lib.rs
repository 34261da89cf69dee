//! keel's IO adapters: thin smol code around the `keel-core` machines.
//!
//! Every decision (when to reconnect, when a connection is dead, whether to step the optimizer)
//! belongs to the core; the modules here open sockets, move frames and tensors, read the clock and
//! feed `now` in.

pub mod config_cmd;
pub mod demo;
pub mod exchange;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod rest;
pub mod stream;
pub mod tls;
pub mod train;
pub mod tune;
