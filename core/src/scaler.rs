//! (placeholder: the scaler work fills this module)
