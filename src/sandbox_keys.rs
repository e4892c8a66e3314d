//! A sandbox RSA-2048 key pair written to a folder: `payhook keys generate`,
//! and the accounts of the relay `payhook bench` starts.

use std::path::Path;

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot write to {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key generation failed: {0}")]
    Crypto(String),
    #[error("{0} already exists; refusing to overwrite it (pass --force to replace the pair)")]
    Exists(String),
}

/// Writes `private.pem` (PKCS#8) and `public.pem` (SPKI) into `dir`, unless
/// either exists: a key an integration already trusts is not silently
/// replaced. `force` replaces them.
pub fn generate_into(dir: &Path, force: bool) -> Result<(), KeysError> {
    if !force {
        for name in ["private.pem", "public.pem"] {
            let path = dir.join(name);
            if path.exists() {
                return Err(KeysError::Exists(path.display().to_string()));
            }
        }
    }
    generate(dir)
}

/// Writes `private.pem` (PKCS#8) and `public.pem` (SPKI) into `dir`.
pub fn generate(dir: &Path) -> Result<(), KeysError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| KeysError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut rng = rand::thread_rng();
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| KeysError::Crypto(e.to_string()))?;
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeysError::Crypto(e.to_string()))?;
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeysError::Crypto(e.to_string()))?;
    let private_path = dir.join("private.pem");
    let public_path = dir.join("public.pem");
    std::fs::write(&private_path, private.as_bytes()).map_err(io(&private_path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&private_path, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::write(&public_path, public.as_bytes()).map_err(io(&public_path))?;
    Ok(())
}
