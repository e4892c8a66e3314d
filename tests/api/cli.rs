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
        vec!["deliveries", "list", "--help"],
        vec!["endpoints", "--help"],
        vec!["endpoints", "list", "--help"],
        vec!["endpoints", "pause", "--help"],
        vec!["endpoints", "resume", "--help"],
        vec!["reload", "--help"],
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

#[test]
fn keys_generate_does_not_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |force: bool| {
        let mut cmd = payhook();
        cmd.args(["keys", "generate", "--out"]).arg(dir.path());
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    assert!(generate(false).status.success());
    let first = std::fs::read(dir.path().join("private.pem")).unwrap();
    let again = generate(false);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("private.pem")).unwrap(),
        first,
        "kept"
    );
    assert!(generate(true).status.success());
    assert_ne!(
        std::fs::read(dir.path().join("private.pem")).unwrap(),
        first,
        "replaced"
    );
}

/// `simulate` is scriptable: its exit code says whether the relay took the
/// callback, an unknown account lists the known ones, and the provider name
/// may be given in any case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_exits_non_zero_when_the_relay_refuses_or_is_unreachable() {
    use crate::helpers::{spawn_app, Backend, DRYAD_SECRET};
    let app = spawn_app(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payhook.toml");
    std::fs::write(
        &config,
        format!("[[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret = \"{DRYAD_SECRET}\"\n"),
    )
    .unwrap();
    let url = format!("{}/notify/dryad-main", app.ingress_url);
    let simulate = |extra: &[&str], url: &str| {
        let mut cmd = payhook();
        cmd.args(["simulate"])
            .args(extra)
            .args(["--account", "dryad-main", "--url", url, "--config"])
            .arg(&config);
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = simulate(&["DRYAD"], &url);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("-> 200"), "{stdout}");

    let (code, stdout, stderr) = simulate(&["dryad", "--forge"], &url);
    assert_eq!(code, Some(1), "a forgery is refused: {stdout}");
    assert!(
        stdout.contains("-> 401") && stderr.contains("refused"),
        "{stdout}{stderr}"
    );

    let closed = format!(
        "http://127.0.0.1:{}/notify/dryad-main",
        crate::helpers::free_port()
    );
    let (code, _, stderr) = simulate(&["dryad"], &closed);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot reach the relay") && stderr.to_lowercase().contains("refused"),
        "{stderr}"
    );

    let out = payhook()
        .args(["simulate", "dryad", "--account", "nope", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no account `nope`") && err.contains("dryad-main (dryad)"),
        "{err}"
    );
}

/// `payhook deliveries list --status …` lists deliveries by state, through
/// the admin API; an empty list says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_list_by_status() {
    use crate::helpers::{dryad_callback, spawn_app, Backend, ADMIN_TOKEN};
    let app = spawn_app(Backend::Sqlite).await;
    let list = |status: &str| {
        let out = payhook()
            .args([
                "deliveries",
                "list",
                "--status",
                status,
                "--admin-url",
                &app.admin_url,
            ])
            .args(["--admin-token", ADMIN_TOKEN])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(list("dead"), "no dead deliveries\n");
    app.merchant.always_fail(true);
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("DL-1", 100, chrono::Utc::now()))
        .await;
    assert_eq!(status, 200);
    let dead = app.wait_for_dead(1, std::time::Duration::from_secs(15)).await;
    let event_id = dead[0]["event_id"].as_str().unwrap().to_owned();
    let shown = list("DEAD");
    assert!(shown.starts_with("ID  "), "{shown}");
    assert!(shown.contains(&event_id) && shown.contains(" dead "), "{shown}");
    assert_eq!(list("delivered"), "no delivered deliveries\n");
}

/// `payhook sink --fail-every 2` fails every attempt for every second event,
/// so that even one delivery at a time shows retries and then a dead delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_fail_every_makes_every_nth_event_dead() {
    use crate::helpers::{dryad_callback, free_port, spawn_app_with, TestOptions};
    let port = free_port();
    let mut sink = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args([
            "sink",
            "--fail-every",
            "2",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = crate::helpers::eventually(std::time::Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    assert!(up, "the sink listens");
    let app = spawn_app_with(TestOptions {
        extra_endpoints: format!(
            "[[endpoints]]\nid = \"sink\"\nurl = \"http://127.0.0.1:{port}/\"\nsecret = \"whsec_c2luaw==\"\naccounts = [\"*\"]\nevents = [\"*\"]\n"
        ),
        ..TestOptions::default()
    })
    .await;
    for order in ["SINK-1", "SINK-2", "SINK-3"] {
        let (status, _) = app
            .post_signed("dryad-main", &dryad_callback(order, 100, chrono::Utc::now()))
            .await;
        assert_eq!(status, 200);
        // One at a time, as a person trying it would send them.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    let dead = app.wait_for_dead(1, std::time::Duration::from_secs(15)).await;
    let _ = sink.kill();
    let _ = sink.wait();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["endpoint"], "sink");
    assert_eq!(dead[0]["attempts"], 4, "the first attempt and three retries");
}
