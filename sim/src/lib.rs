//! keel-sim: drives the real `keel-core` machines through simulated days with injected faults.
