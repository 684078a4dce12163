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
-- Partitions are created LIKE the journal and attached, so each holds a copy of its
-- own, left behind when the journal's goes.

alter table changecast.change_log drop constraint change_log_event_check;

do $$
declare
    part regclass;
begin
    for part in select c.conrelid::regclass
                  from pg_constraint c
                  join pg_partition_tree('changecast.change_log') p on p.relid = c.conrelid
                 where c.conname = 'change_log_event_check' loop
        execute format('alter table %s drop constraint change_log_event_check', part);
    end loop;
end
$$;
