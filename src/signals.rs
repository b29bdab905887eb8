//! Signal handling (being written).
