-- The same table as migrations/sqlite/0011_retention.sql, in BIGINT.
-- Retention (`[storage] retention`, `raw_retention`): how far a finished
-- pass got, so that the next one (in this process or another, or after a
-- restart) starts there instead of reading every event again. One row per
-- mark; `raw_blanked_through`: when the last event a finished raw-blanking
-- pass blanked was made (its id's time), so that every older event received
-- before that pass's cut-off has had its raw body and headers blanked.
-- Marks only move forward.
--
-- No index is added: old events are found through the primary key (event
-- ids are ULIDs, ordered by time), and the ingest keeps writing no more
-- index entries than before.
CREATE TABLE retention_marks (
    name  TEXT PRIMARY KEY NOT NULL,
    at_ms BIGINT NOT NULL
);
