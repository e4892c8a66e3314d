-- A job claim changes only `lease_until`, which no index covers, so it can be
-- a HOT update (no new index entries) if the row's page has room for the new
-- version. Freshly inserted jobs filled their pages completely, so every
-- claim wrote a new entry into each of the table's five indexes: about five
-- WAL records per claimed job. Free space on each page keeps it to one.
-- (PostgreSQL only: SQLite updates rows in place.)
ALTER TABLE deliveries SET (fillfactor = 70);
