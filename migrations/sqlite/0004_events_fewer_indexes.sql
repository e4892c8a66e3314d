-- Every ingest writes an entry into each of the events table's indexes (a
-- page of each in every commit), so an index nothing reads is pure cost.
-- No query filters or sorts events by `received_at`: the admin API pages by
-- id, and ULIDs sort by time. Same as the PostgreSQL migration 0005.
DROP INDEX IF EXISTS events_received_at;
