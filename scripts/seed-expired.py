#!/usr/bin/env python3
"""Seeds COUNT finished events into a payhook SQLite store, received DAYS ago:
one delivered delivery and one attempt each, a raw body of RAW bytes, with
real ULID event ids of that time. For the retention benchmark
(BENCHMARKS.md, "Retention"): run `payhook migrate` on the file first.

    scripts/seed-expired.py FILE [COUNT] [DAYS] [RAW]
"""
import os
import sqlite3
import sys
import time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(ms: int) -> str:
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def main() -> None:
    path = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    days = float(sys.argv[3]) if len(sys.argv) > 3 else 40
    raw_len = int(sys.argv[4]) if len(sys.argv) > 4 else 600
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    start_ms = int(time.time() * 1000) - int(days * 86_400_000)
    raw = b"r" * raw_len
    headers = '{"x-dryad-signature":"' + "s" * 64 + '"}'
    payload = '{"id":"evt","type":"payment.succeeded","provider":"dryad",' + '"x":"' + "p" * 400 + '"}'
    (next_delivery,) = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM deliveries").fetchone()
    batch = 50_000
    started = time.time()
    for lo in range(0, count, batch):
        hi = min(count, lo + batch)
        events, deliveries, attempts = [], [], []
        for i in range(lo, hi):
            # 10 events a millisecond, in time order.
            ms = start_ms + i // 10
            eid = "evt_" + ulid(ms)
            did = next_delivery + i
            events.append((eid, "bench-dryad", "dryad", "payment.succeeded", f"OLD{i}", "", f"OLD{i}",
                           payload, raw, headers, ms))
            deliveries.append((did, eid, "bench-sink", "delivered", 1, ms, 0, ms, ms + 20))
            attempts.append((did, 1, ms + 5, 15, "delivered", 200, None, "ok"))
        conn.executemany(
            "INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, "
            "merchant_order_no, payload, raw_body, raw_headers, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            events)
        conn.executemany(
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, next_attempt_at, lease_until, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)", deliveries)
        conn.executemany(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, http_status, error, "
            "response_excerpt) VALUES (?,?,?,?,?,?,?,?)", attempts)
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"seeded {count} events in {time.time() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
