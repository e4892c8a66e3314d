//! Tests that stop or cut the shared RabbitMQ. They would disturb every other
//! test using the broker, so they are `#[ignore]`d in the normal run and
//! `scripts/test.sh` runs them afterwards, one at a time
//! (`cargo test --test api disruptive -- --ignored --test-threads=1`).

use std::collections::HashSet;
use std::time::Duration;

use payhook::store::OUTBOX_LEASE;

use crate::helpers::*;

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl is installed with the broker");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

async fn ready(app: &TestApp) -> bool {
    app.client
        .get(format!("{}/readyz", app.admin_url))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

async fn send_batch(app: &TestApp, tag: &str, n: usize) {
    for i in 0..n {
        let signed = dryad_callback(&format!("{tag}{i}"), 100, chrono::Utc::now());
        let (status, _) = app.post_signed("dryad-main", &signed).await;
        assert_eq!(
            status, 200,
            "{tag}{i} acknowledged (stored in PostgreSQL, broker or not)"
        );
    }
}

fn unique_trades(app: &TestApp) -> HashSet<String> {
    app.merchant
        .received()
        .iter()
        .map(|r| r.json()["provider_trade_no"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
#[ignore = "stops the shared RabbitMQ; scripts/test.sh runs it alone"]
async fn disruptive_broker_restart_loses_nothing() {
    let app = spawn_app(Backend::Scaled).await;
    assert!(eventually(Duration::from_secs(15), || ready(&app)).await);
    send_batch(&app, "before", 30).await;

    rabbitmqctl(&["stop_app"]);
    assert!(
        eventually(Duration::from_secs(15), || async { !ready(&app).await }).await,
        "/readyz goes red while the broker is down"
    );
    // Still acknowledged: the outbox holds them.
    send_batch(&app, "during", 30).await;
    assert!(
        app.store().count_outbox().await.unwrap() > 0,
        "unpublished events wait in the outbox"
    );
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    assert!(
        eventually(Duration::from_secs(60), || ready(&app)).await,
        "reconnected"
    );
    send_batch(&app, "after", 30).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            unique_trades(&app).len() == 90
        })
        .await,
        "every acknowledged callback delivered; got {}",
        unique_trades(&app).len()
    );
    // Rows cut off mid-publish wait out their lease (see below).
    assert!(
        eventually(OUTBOX_LEASE + Duration::from_secs(10), || async {
            app.store().count_outbox().await.unwrap() == 0
        })
        .await,
        "the outbox drained"
    );
}

#[tokio::test]
#[ignore = "closes every connection of the shared RabbitMQ; scripts/test.sh runs it alone"]
async fn disruptive_connections_closed_mid_run() {
    let app = spawn_app(Backend::Scaled).await;
    assert!(eventually(Duration::from_secs(15), || ready(&app)).await);
    let sender = async {
        for round in 0..10 {
            send_batch(&app, &format!("r{round}-"), 20).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let cutter = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ =
                tokio::task::spawn_blocking(|| rabbitmqctl(&["close_all_connections", "payhook test"])).await;
        }
    };
    tokio::join!(sender, cutter);
    // A row whose publish or confirm was cut off is sent again by the next
    // session, not left to wait out its lease (after which a scan would
    // take it): every event arrives well before a lease of the run could
    // have run out.
    assert!(
        eventually(OUTBOX_LEASE, || async { unique_trades(&app).len() == 200 }).await,
        "deliveries resume at once and nothing acknowledged is lost; got {}",
        unique_trades(&app).len()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.store().count_outbox().await.unwrap() == 0
        })
        .await,
        "the outbox drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RabbitMQ and PostgreSQL; scripts/test.sh runs it alone"]
async fn disruptive_chaos_scaled_kills_and_restarts_lose_nothing() {
    crate::chaos::chaos_run(Backend::Scaled).await;
}
