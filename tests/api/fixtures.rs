//! The vendored contract in `tests/fixtures/` is a copy of the shared one (the
//! folder `shared` beside the repository, the source of truth): a change there
//! that was not copied here fails this test until
//! `scripts/refresh-fixtures.sh` is run. Where no such folder exists (a clone
//! on its own) there is nothing to compare with, and the test says so.

use std::path::Path;
use std::process::Command;

#[test]
fn vendored_fixtures_match_the_shared_contract() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(shared) = repo.parent().map(|parent| parent.join("shared")) else {
        return;
    };
    if !shared.join("vectors").is_dir() {
        eprintln!(
            "note: no shared contract at {}; the vendored fixtures are the only copy here",
            shared.display()
        );
        return;
    }
    let out = Command::new("bash")
        .arg(repo.join("scripts/refresh-fixtures.sh"))
        .arg("--check")
        .arg(&shared)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "tests/fixtures differs from {}:\n{}{}",
        shared.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The copy holds every vector and key the tests read.
#[test]
fn vendored_fixtures_are_complete() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let vectors: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vectors/vectors.json")).unwrap()).unwrap();
    for v in &vectors {
        let account = v["account"].as_object().unwrap();
        for (key, value) in account {
            if key.ends_with("_file") {
                let file = dir.join("vectors").join(value.as_str().unwrap());
                assert!(file.is_file(), "{}: {} is missing", v["name"], file.display());
            }
        }
    }
    assert!(dir.join("spec/README.md").is_file());
}
