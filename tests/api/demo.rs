//! `payhook demo`: the whole relay in one process, with no config and no
//! services, from any directory.

#[test]
fn the_demo_delivers_every_provider_and_refuses_the_forgery() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"));
    command.arg("demo").current_dir(dir.path());
    for var in [
        "PAYHOOK_CONFIG",
        "PAYHOOK_LISTEN",
        "PAYHOOK_ADMIN_LISTEN",
        "PAYHOOK_DATABASE_URL",
        "PAYHOOK_AMQP_URL",
        "PAYHOOK_ADMIN_TOKEN",
        "PAYHOOK_LOG",
    ] {
        command.env_remove(var);
    }
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let received = section(&text, "What the merchant received", "Deduplicated");
    // Every provider's sandbox accounts, as the registry lists them.
    let accounts: Vec<(String, &str)> = payhook::ingress::registry::sandbox_accounts()
        .map(|a| {
            let table: toml::Table = a.account.parse().unwrap();
            (table["provider"].as_str().unwrap().to_owned(), a.id)
        })
        .collect();
    assert!(accounts.len() >= 9, "{accounts:?}");
    for (provider, account) in &accounts {
        let (provider, account) = (provider.as_str(), *account);
        let row = received
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(account))
            .unwrap_or_else(|| panic!("{account} delivered:\n{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], provider, "{row}");
        assert_eq!(cells[2], "payment.succeeded", "{row}");
        assert!(
            cells[3].parse::<f64>().is_ok() && cells[4] == "CNY",
            "amount: {row}"
        );
        assert!(cells[5].starts_with("ORDER-"), "order no: {row}");
        assert!(cells[6].parse::<u32>().is_ok_and(|n| n >= 1), "attempts: {row}");
        assert_eq!(cells[7], "ok", "signatures: {row}");
        assert!(cells[8].starts_with("evt_"), "{row}");
    }
    assert!(
        received.lines().any(|l| l.split_whitespace().nth(6) == Some("2")),
        "the retried first delivery shows 2 attempts:\n{received}"
    );

    let deduplicated = section(&text, "Deduplicated", "Refused");
    let dup_rows: Vec<&str> = deduplicated.lines().skip(2).filter(|l| !l.is_empty()).collect();
    assert_eq!(dup_rows.len(), 1, "{deduplicated}");
    assert!(dup_rows[0].contains("200 SUCCESS"), "{deduplicated}");
    assert!(
        dup_rows[0].trim_end().ends_with(" 1"),
        "delivered once: {deduplicated}"
    );

    let refused = section(&text, "Refused", "summary");
    let refused_rows: Vec<&str> = refused.lines().skip(2).filter(|l| !l.is_empty()).collect();
    assert_eq!(refused_rows.len(), 1, "{refused}");
    assert!(
        refused_rows[0].contains("forged signature") && refused_rows[0].contains("401"),
        "{refused}"
    );
    assert!(
        text.contains(&format!(
            "summary: {} delivered, 1 deduplicated, 1 refused",
            accounts.len()
        )),
        "{text}"
    );
    // It leaves nothing behind where it was run.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The text from the line starting with `from` up to the one starting with `to`.
fn section<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let start = text
        .find(&format!("\n{from}"))
        .unwrap_or_else(|| panic!("no `{from}` section in\n{text}"));
    let rest = &text[start + 1..];
    let end = rest.find(&format!("\n{to}")).unwrap_or(rest.len());
    &rest[..end]
}
