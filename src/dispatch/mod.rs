//! Delivery to merchant endpoints.
//!
//! - `attempt`: one delivery attempt, from a claimed job to its stored outcome.
//! - `health`: each endpoint's answers tallied and reported, auto-pause,
//!   and the local view of paused endpoints.
//! - `http`: the outbound client (timeouts, read limit, SSRF guard).
//! - `sign`: the delivery signature headers.
//! - `worker`: the embedded queue's loop, taking due jobs from the store.

pub mod attempt;
pub mod health;
pub mod http;
pub mod sign;
pub mod worker;

pub use attempt::{Deliverer, Endpoint};
pub use worker::EmbeddedWorker;
