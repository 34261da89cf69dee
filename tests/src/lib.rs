//! End-to-end tests across keel's crates live in `tests/tests/`; this library is empty.
