//! One test binary: every test talks to a real relay over HTTP on 127.0.0.1,
//! with a real database of its own.

mod cli;
mod delivery;
mod dryad_flow;
mod helpers;
mod vectors;
