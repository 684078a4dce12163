-- The grants an operator gives the roles around changecast (PostgreSQL 13+).
-- Run as the role that owns the database and ran changecast's migrations:
--
--   psql "$DATABASE_URL" -v app_role=app -v watcher_role=app_migrator -f sql/grants.sql
--
-- Three kinds of role meet changecast:
--
-- 1. The changecast role: runs `changecast migrate`/`serve` and owns schema changecast,
--    its journal and its functions. It needs no superuser. To attach triggers,
--    `watch()` runs as this role, so it must own every table it watches, or be a member
--    of the owning role:
--
--        grant <table owner role> to <changecast role>;
--
-- 2. Application roles that only read and write their tables: they need NOTHING in
--    changecast. The change triggers run as the changecast role (security definer);
--    writers never touch the journal themselves.
--
-- 3. A role that decides which tables are watched (typically the application's own
--    migration role): EXECUTE on watch()/unwatch(). Grant it only to roles trusted to
--    write events for every tenant: whoever may watch a table may fill its tenant column
--    with any tenant. watch() also checks that the calling session's role
--    (session_user) holds TRIGGER and SELECT on the table; unwatch() checks TRIGGER.

\if :{?watcher_role}
grant usage on schema changecast to :"watcher_role";
grant execute on function changecast.watch(regclass, text, text, text, text[]),
                          changecast.unwatch(regclass)
   to :"watcher_role";
\else
\echo 'watcher_role not set (-v watcher_role=...): no role may call watch()/unwatch() but the owner'
\endif

\if :{?app_role}
-- Writers need nothing in changecast to have their row changes captured. To send
-- application events with `changecast.publish()` they need EXECUTE on it; like watch(),
-- it may address any tenant, so grant it to roles trusted with every tenant's stream.
grant usage on schema changecast to :"app_role";
grant execute on function changecast.publish(text, text, jsonb) to :"app_role";
\endif

-- Never grant to application roles: INSERT/UPDATE/DELETE on any changecast table
-- (change_log, watched, journal_meta, journal_ticks), EXECUTE on changecast.capture(),
-- changecast.capture_truncate() or changecast.attach(). Check with:
--
--   select p.oid::regprocedure, r.rolname
--   from pg_proc p, pg_roles r
--   where p.pronamespace = 'changecast'::regnamespace
--     and has_function_privilege(r.oid, p.oid, 'execute') and not r.rolsuper;
