-- Every ingest writes an entry into each of the events table's indexes, so
-- an index nothing reads is pure cost on the hottest statement.
--
-- No query filters or sorts events by `received_at` (the admin API pages
-- by id, and ULIDs sort by time). Same as the SQLite migration 0004.
DROP INDEX IF EXISTS events_received_at;

-- `events_id_bytes` kept the ids in byte order beside the primary key, in
-- the database's collation, for the admin API's newest-first paging
-- (`ORDER BY id COLLATE "C"`). With the key itself in the "C" collation
-- its index serves that order and the second index goes. The columns that
-- refer to an event id take the same collation, so that joins compare
-- like with like. This rewrites the three tables once.
ALTER TABLE events ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries ALTER COLUMN event_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox ALTER COLUMN event_id TYPE TEXT COLLATE "C";
DROP INDEX IF EXISTS events_id_bytes;
