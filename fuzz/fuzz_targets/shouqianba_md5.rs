#![no_main]
//! `cargo fuzz run shouqianba_md5` — input format: see `fuzz/src/lib.rs`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    payhook_fuzz::shouqianba_md5(data);
});
