//! Serializable statistics snapshots: what `--stats-json`, the metrics endpoint and reports show.

pub mod connection;
pub mod training;
