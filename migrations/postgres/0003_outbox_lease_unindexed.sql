-- The outbox is read in id order (the primary key) and holds only rows not
-- yet published, a few batches' worth in normal running. Indexing
-- `lease_until` made every lease a non-HOT update (a new entry in each index)
-- and every row one more index entry to write and remove; a scan in id order
-- skips the few leased rows just as well. Free space on each page keeps the
-- lease update on the row's own page (HOT).
DROP INDEX IF EXISTS outbox_lease;
ALTER TABLE outbox SET (fillfactor = 70);
