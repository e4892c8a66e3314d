#![no_main]
//! `PAYHOOK_FUZZ_TARGET=<target> cargo fuzz run provider fuzz/corpus/<target>`:
//! the input format is in `payhook::ingress::fuzz`, the targets in each
//! provider module (`ProviderModule::FUZZ`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    payhook_fuzz::run(&payhook_fuzz::SELECTED, data);
});
