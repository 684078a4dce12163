-- changecast: wake-ups without the commit lock (performance issue #8).
--
-- Every transaction that issues NOTIFY takes a database-wide lock at commit and flushes
-- WAL alone, so watched tables were capped near 3,600 commits/s whatever the number of
-- writers. The journal carries the data, not the notification: a wake-up is only needed
-- while a service instance is waiting for one. Each instance keeps a row here; while it
-- drains a busy journal (reading batch after batch anyway) it sets `draining`, and the
-- triggers skip pg_notify as long as no instance is waiting. An instance that stops
-- draining clears its mark first and then reads once more, and keeps polling briefly for
-- writers that saw the mark just before it was cleared (see src/journal/tailer.rs).
-- A crashed instance's row stays until others remove it (by `seen_at`); with
-- `draining = false` it only costs notifications, never a missed change.

create table changecast.listeners (
    instance  uuid primary key,
    draining  boolean not null default false,
    seen_at   timestamptz not null default now()
);

/*
 * Function: changecast.ring()  (called by the capture triggers, see V3)
 * Rings unless every running service instance is draining the journal anyway.
 */
create or replace function changecast.ring() returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    if exists (select 1 from changecast.listeners where not draining) then
        perform pg_notify('changecast', '');
    end if;
end
$$;
