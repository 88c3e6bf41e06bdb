//! The baton controller: connects to the API server and serves health and
//! metrics endpoints.

fn main() {}
