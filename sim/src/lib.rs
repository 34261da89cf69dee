//! keel-sim: drives the real `keel-core` machines through simulated days with injected faults.

pub mod conn_sim;
pub mod exchange;
pub mod network;
pub mod profile;
pub mod replay;
pub mod rest_sim;
pub mod run;
pub mod scaler_cli;
pub mod scaler_sim;
