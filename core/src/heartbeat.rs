//! (placeholder: the connection-core work fills this module)
