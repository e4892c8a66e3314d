//! Replays every seed (`corpus/<target>/`) and saved crash
//! (`regressions/<target>/`) through the same harness the fuzz targets use,
//! on a stable toolchain and without libFuzzer:
//! `cargo test --manifest-path fuzz/Cargo.toml`.

use std::fs;
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_and_regressions_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let names = payhook_fuzz::target_names();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let seeds = inputs(&root.join("corpus").join(name));
        assert!(!seeds.is_empty(), "{name}: no seed corpus");
        let mut accepted = 0;
        for path in seeds
            .iter()
            .chain(inputs(&root.join("regressions").join(name)).iter())
        {
            let data = fs::read(path).unwrap();
            // A panic fails the test; the line before it names the input.
            eprintln!("{name}: {}", path.display());
            let outcome = payhook_fuzz::run(name, &data);
            eprintln!("    -> {outcome:?}");
            if outcome.is_some_and(|o| o.verified && o.parsed) {
                accepted += 1;
            }
        }
        // The seeds must stay realistic: at least one verifies and parses.
        assert!(accepted > 0, "{name}: no seed passes verify and parse");
    }
}
