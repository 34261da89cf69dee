//! keel-sim: drives the real `keel-core` machines through simulated days with injected faults.

pub mod replay;
pub mod run;
pub mod scaler_cli;
