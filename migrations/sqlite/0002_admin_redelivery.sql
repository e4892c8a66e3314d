-- Operator redelivery (`/admin/*`).
--
-- An outbox row written by a redelivery carries only delivery jobs: the event
-- was already published to the events exchange, so the publisher skips it.
ALTER TABLE outbox ADD COLUMN publish_event INTEGER NOT NULL DEFAULT 1;

-- A delivery made by redelivering a dead one points at it, so that a dead
-- delivery is redelivered once, however often the bulk redelivery is run.
ALTER TABLE deliveries ADD COLUMN redelivery_of INTEGER REFERENCES deliveries (id);
CREATE UNIQUE INDEX deliveries_redelivery_of ON deliveries (redelivery_of) WHERE redelivery_of IS NOT NULL;
