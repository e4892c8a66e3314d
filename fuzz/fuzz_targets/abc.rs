#![no_main]
//! `cargo fuzz run abc` — input format: see `fuzz/src/lib.rs`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    payhook_fuzz::abc(data);
});
