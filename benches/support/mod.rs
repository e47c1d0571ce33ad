//! Pieces of the load benchmark: options, room layout, the client worker,
//! the processes it starts and the latency histogram.

pub mod args;
pub mod client;
pub mod histogram;
pub mod layout;
pub mod procs;
