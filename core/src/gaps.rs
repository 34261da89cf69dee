//! (placeholder: the protocol work fills this module)
