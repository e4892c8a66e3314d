// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds them.
// Also records the commit the binary is built from (`PAYHOOK_COMMIT`), which
// `payhook bench` writes into its reports.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=PAYHOOK_COMMIT");
    let commit = std::env::var("PAYHOOK_COMMIT").ok().or_else(git_commit);
    println!(
        "cargo:rustc-env=PAYHOOK_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}

/// `git rev-parse --short HEAD`, with `+dirty` if tracked files have changes;
/// `None` outside a git checkout (a source tarball, a Docker build context).
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty())?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}+dirty") } else { head })
}
