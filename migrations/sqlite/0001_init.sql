-- Times are epoch milliseconds (INTEGER), identical in SQLite and PostgreSQL.

CREATE TABLE events (
    id                TEXT PRIMARY KEY NOT NULL,
    account           TEXT NOT NULL,
    provider          TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    provider_trade_no TEXT NOT NULL,
    dedup_extra       TEXT NOT NULL,
    merchant_order_no TEXT,
    payload           TEXT NOT NULL,   -- the event JSON exactly as delivered
    raw_body          BLOB NOT NULL,   -- the callback bytes as received
    raw_headers       TEXT NOT NULL,   -- JSON object of the callback's headers
    received_at       INTEGER NOT NULL
);
-- The dedup identity of providers.md: a repeat can never create a second event.
CREATE UNIQUE INDEX events_dedup ON events (account, event_type, provider_trade_no, dedup_extra);
CREATE INDEX events_merchant_order_no ON events (merchant_order_no);
CREATE INDEX events_received_at ON events (received_at);

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL REFERENCES events (id),
    endpoint_id     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- A dispatcher holds a job until this instant; after it (a crash), any
    -- dispatcher may take it again. The store, not memory, says what is next.
    lease_until     INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_status ON deliveries (status, id);

CREATE TABLE attempts (
    delivery_id      INTEGER NOT NULL REFERENCES deliveries (id),
    attempt          INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    http_status      INTEGER,
    error            TEXT,
    response_excerpt TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE nonces (
    account TEXT NOT NULL,
    nonce   TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (account, nonce)
);
CREATE INDEX nonces_seen_at ON nonces (seen_at);

-- RabbitMQ mode: written in the ingress transaction, drained by the publisher.
-- A row is deleted only after the broker confirmed the publish; a publisher
-- that dies mid-publish leaves it leased, and it is published again later.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL REFERENCES events (id),
    created_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_lease ON outbox (lease_until, id);
