// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds them.
// Writes the provider registry table from `src/ingress/mod.rs`. Also records
// the commit the binary is built from (`PAYHOOK_COMMIT`), which `payhook
// bench` writes into its reports.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    write_provider_registry();
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

/// Writes `$OUT_DIR/provider_registry.rs`: the `for_each_provider!` macro,
/// from the `pub mod NAME;` lines between `// registry:begin` and
/// `// registry:end` in `src/ingress/mod.rs`, so that a provider's one line
/// outside its own file is its module declaration. Module `wechatpay` gives
/// the line `wechatpay => Wechatpay,`: its verifier type is the module's name
/// capitalised.
fn write_provider_registry() {
    const SOURCE: &str = "src/ingress/mod.rs";
    println!("cargo:rerun-if-changed={SOURCE}");
    let text = std::fs::read_to_string(SOURCE).unwrap_or_else(|e| panic!("{SOURCE}: {e}"));
    let mut lines = text.lines().map(str::trim);
    if !lines.any(|l| l == "// registry:begin") {
        panic!("{SOURCE}: no `// registry:begin` line");
    }
    let mut table = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == "// registry:end" {
            ended = true;
            break;
        }
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let module = line
            .strip_prefix("pub mod ")
            .and_then(|rest| rest.strip_suffix(';'))
            .filter(|m| {
                !m.is_empty()
                    && m.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
            .unwrap_or_else(|| {
                panic!("{SOURCE}: the registry holds only `pub mod name;` lines, not `{line}`")
            });
        let mut chars = module.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or_default();
        table.push_str(&format!("            {module} => {first}{},\n", chars.as_str()));
    }
    if !ended || table.is_empty() {
        panic!("{SOURCE}: the registry needs `pub mod` lines and a `// registry:end` line");
    }
    let out = format!(
        "// Written by build.rs from the registry in {SOURCE}.\n\
         macro_rules! for_each_provider {{\n    ($then:ident) => {{\n        $then! {{\n{table}        }}\n    }};\n}}\n"
    );
    let dir = std::env::var("OUT_DIR").unwrap_or_else(|e| panic!("OUT_DIR: {e}"));
    let path = std::path::Path::new(&dir).join("provider_registry.rs");
    std::fs::write(&path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
