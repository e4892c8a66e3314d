-- The outbox is read in id order (the rowid) and holds only rows not yet
-- published; indexing `lease_until` cost an index entry written and removed
-- per row and per lease, and a scan in id order skips the few leased rows
-- just as well. Same as the PostgreSQL migration of the same number.
DROP INDEX IF EXISTS outbox_lease;
