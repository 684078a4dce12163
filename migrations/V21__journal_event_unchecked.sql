-- The journal's CHECK on `event` goes. PostgreSQL plans a table's CHECK constraints
-- afresh for every INSERT statement it starts, and a capture writes its rows with one
-- INSERT per statement: for a single-row write, that planning cost about 48,000 CPU
-- instructions, a tenth of the whole watched statement (callgrind, PostgreSQL 15).
--
-- What it guarded is kept by who may write: only changecast's own functions insert
-- journal rows (application roles have no rights on it), each with an event of its
-- own. A row of an event the service does not know (written by a newer version sharing
-- the database) makes the subscribers of its type resync instead of failing the read.
--
-- Every partition holds the constraint as inherited only: ATTACH merges the copy that
-- a partition created LIKE the journal brings (the first partition, those the pruner
-- creates) into the journal's, and the DEFAULT partition was created as a partition.
-- Dropping it from the journal drops it from all of them. ALTER TABLE takes ACCESS
-- EXCLUSIVE on the journal and its partitions for a catalog change only, but waits for
-- the transactions that use them, and captures and reads queue behind it meanwhile.

alter table changecast.change_log drop constraint change_log_event_check;
