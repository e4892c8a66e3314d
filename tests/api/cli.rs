//! The `payhook` binary's commands.

use std::process::Command;

fn payhook() -> Command {
    Command::new(env!("CARGO_BIN_EXE_payhook"))
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["simulate", "--help"],
        vec!["sink", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "generate", "--help"],
        vec!["bench", "--help"],
        vec!["demo", "--help"],
        vec!["events", "list", "--help"],
        vec!["events", "show", "--help"],
        vec!["redeliver", "--help"],
    ] {
        let out = payhook().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}");
        if args.len() > 1 {
            // Every subcommand shows how it is used, not only its flags.
            assert!(
                text.contains("Examples:\n  payhook "),
                "{args:?} has no examples:\n{text}"
            );
        }
    }
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[delivery]\nretry_schedul = [\"1s\"]\n").unwrap();
    let out = payhook()
        .args(["migrate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retry_schedul"), "{err}");

    std::fs::write(
        &path,
        "[[accounts]]\nid = \"cbb-x\"\nprovider = \"cbb\"\npublic_key_file = \"missing.pem\"\n",
    )
    .unwrap();
    let out = payhook()
        .args(["serve", "--config"])
        .arg(&path)
        .env("PAYHOOK_LISTEN", "127.0.0.1:0")
        .env("PAYHOOK_ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "PAYHOOK_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("x.db").display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cbb-x") && err.contains("missing.pem"), "{err}");
}

#[test]
fn keys_generate_writes_a_usable_pair() {
    let dir = tempfile::tempdir().unwrap();
    let out = payhook()
        .args(["keys", "generate", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read(dir.path().join("public.pem")).unwrap();
    let key = payhook::ingress::common::RsaPublicKey::from_bytes(&public, "generated", 2048).unwrap();
    let signer = payhook::ingress::common::RsaSigningKey::load(&dir.path().join("private.pem")).unwrap();
    let sig = signer
        .sign(payhook::ingress::common::RsaAlgorithm::Sha256, b"m")
        .unwrap();
    assert!(key.verify(payhook::ingress::common::RsaAlgorithm::Sha256, b"m", &sig));
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = payhook()
        .arg("serve")
        .env("PAYHOOK_LISTEN", "127.0.0.1:0")
        .env("PAYHOOK_ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "PAYHOOK_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("p.db").display()),
        )
        .env("PAYHOOK_CONFIG", "")
        .env("PAYHOOK_LOG", "info")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // Wait until it runs, then ask it to stop as systemd would.
    for line in lines.by_ref() {
        if line.unwrap().contains("payhook is running") {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(rest.iter().any(|l| l.contains("payhook stopped")), "{rest:?}");
}
