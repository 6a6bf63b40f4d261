//! The conformance suite every store engine must pass (to be written).
