//! Writes the seed corpus `fuzz/corpus/<target>/` from the test vectors:
//! each vector of the target's provider, its headers in the target's slots
//! (mode 0: no assist), named after the vector.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin seed_corpus [VECTORS]`
//! (default: `tests/fixtures/vectors/vectors.json`). Existing seeds are kept
//! (the `.assist` ones were written by hand-made encoders when their targets
//! were added).

use std::path::PathBuf;

use serde_json::Value;

fn main() {
    let root: PathBuf = [env!("CARGO_MANIFEST_DIR"), ".."].iter().collect();
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/fixtures/vectors/vectors.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let vectors: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for name in payhook_fuzz::target_names() {
        let provider = payhook_fuzz::provider_of(name).expect("a target's provider");
        let slots = payhook_fuzz::headers_of(name).expect("a target's headers");
        let dir = root.join("fuzz/corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut count = 0;
        for v in vectors.iter().filter(|v| v["provider"] == provider) {
            let file = dir.join(v["name"].as_str().expect("a vector's name"));
            std::fs::write(&file, encode(v, slots)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            count += 1;
        }
        println!("{name}: {count} seeds from the vectors");
    }
}

fn encode(v: &Value, slots: &[&str]) -> Vec<u8> {
    let headers = v["request"]["headers"].as_object().expect("request.headers");
    let header = |slot: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(slot))
            .and_then(|(_, v)| v.as_str())
    };
    let body = v["request"]["body"].as_str().expect("request.body");
    payhook::ingress::fuzz::encode(slots, header, body.as_bytes())
}
