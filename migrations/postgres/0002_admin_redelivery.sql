-- The same as migrations/sqlite/0002_admin_redelivery.sql, in PostgreSQL types.
--
-- An outbox row written by a redelivery carries only delivery jobs: the event
-- was already published to the events exchange, so the publisher skips it.
ALTER TABLE outbox ADD COLUMN publish_event BOOLEAN NOT NULL DEFAULT true;

-- A delivery made by redelivering a dead one points at it, so that a dead
-- delivery is redelivered once, however often the bulk redelivery is run.
ALTER TABLE deliveries ADD COLUMN redelivery_of BIGINT REFERENCES deliveries (id);
CREATE UNIQUE INDEX deliveries_redelivery_of ON deliveries (redelivery_of) WHERE redelivery_of IS NOT NULL;

-- The admin API pages through events newest first by id in byte order
-- (ULIDs sort by time), whatever the database's collation.
CREATE INDEX events_id_bytes ON events (id COLLATE "C");
