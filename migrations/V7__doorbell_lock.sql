-- changecast: the doorbell as an advisory lock (performance issue #8).
--
-- Every written row asks "does a service instance wait for a wake-up?". V5 answered with
-- a query of changecast.listeners: 21 µs per row on top of the trigger's 56 µs (measured
-- with 20,000-row INSERTs), and 85 % of the journal's write rate at 8 writers. A try of an
-- advisory lock answers in under 2 µs:
--
--   * an instance that waits for wake-ups holds the lock (1667458146, 1) exclusively, on
--     a connection of its own (src/journal/doorbell.rs); a second such instance queues
--     for it, and a queued request counts as held;
--   * a writer tries to take it shared for its transaction: when it cannot, some instance
--     waits, and it rings. When it can, it keeps the lock until it ends, so an instance
--     that stops draining is granted the lock only after every writer that did not ring
--     has committed (or rolled back), and reads the journal once more then.
--
-- A crashed instance's lock goes with its connection (a request still waiting, too: the
-- doorbell connection sets client_connection_check_interval where PostgreSQL has it):
-- nothing to clean up. A grant also waits for any other instance holding the lock, and
-- for a prepared (two-phase) transaction that skipped ringing until COMMIT PREPARED; the
-- instance polls meanwhile. The key is in the two-integer space of advisory locks, as
-- 'ccdb' (changecast doorbell).
--
-- changecast.listeners stays for now: instances of the previous version, still running
-- during a rolling upgrade, write their rows there. They get wake-ups only while an
-- instance of this version waits (until then, their 2 s safety poll); drop the table once
-- every instance runs this version.

/*
 * Function: changecast.ring()  (called by the capture triggers and publish(), see V6)
 * Rings unless no service instance waits for a wake-up (holds or requests the doorbell
 * lock). Not ringing, the transaction keeps the lock shared until it ends.
 */
create or replace function changecast.ring() returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    if not pg_try_advisory_xact_lock_shared(1667458146, 1) then
        perform pg_notify('changecast', '');
    end if;
end
$$;

comment on table changecast.listeners is
    'Unused since V7 (the doorbell is an advisory lock); kept for instances of the previous version during a rolling upgrade.';
