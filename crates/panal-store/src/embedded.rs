//! The embedded engine (to be written).
