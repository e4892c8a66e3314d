-- The same table as migrations/sqlite/0010_endpoint_state.sql, in BIGINT.
-- What payhook knows about each merchant endpoint beyond its config: whether
-- an operator (or auto-pause) paused it, and how its deliveries went lately.
-- Kept in the store, so that every process of a scaled deployment sees the
-- same pause. A row exists only for an endpoint that was paused or attempted.
-- (Numbered 0010 to leave room for other changes of the same release.)
CREATE TABLE endpoint_state (
    endpoint_id          TEXT PRIMARY KEY NOT NULL,
    paused_at            BIGINT,             -- NULL: not paused
    paused_by            TEXT,               -- 'operator' or 'auto'
    last_success_at      BIGINT,             -- the last 2xx answer
    failing_since        BIGINT,             -- the first failure after it; NULL when the last answer was a 2xx
    consecutive_failures BIGINT NOT NULL DEFAULT 0
);
