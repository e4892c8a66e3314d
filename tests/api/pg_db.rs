//! A fresh PostgreSQL database per test, dropped when the test ends.
//!
//! The server is named by `PAYHOOK_TEST_POSTGRES_URL` (an admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use sqlx::{Connection, PgConnection};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("PAYHOOK_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A database of its own; `url` points at it. Dropping this drops it.
pub struct TestDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// The database's name, e.g. for `pg_terminate_backend` in tests that
    /// cut the relay off from PostgreSQL.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Creates `payhook_test_<ulid>` on the test server.
pub async fn fresh_database() -> TestDatabase {
    let admin_url = admin_url();
    let name = format!("payhook_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the test PostgreSQL at {admin_url} ({e}); set PAYHOOK_TEST_POSTGRES_URL or start it \
             with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        )
    });
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    let mut url = url::Url::parse(&admin_url).expect("PAYHOOK_TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    TestDatabase {
        url: url.to_string(),
        name,
        admin_url,
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime that must not be
        // blocked on: use a thread with a runtime of its own, and wait for it
        // so the database is gone before the test binary exits.
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}
