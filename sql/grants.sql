-- The grants an operator gives the roles around changecast (PostgreSQL 13+). Run as the
-- role that runs changecast (it owns schema changecast), after `changecast migrate`:
--
--   psql "$CHANGECAST_DATABASE_URL" -v watcher_role=app_owner -v app_role=app_writer -f sql/grants.sql
--
-- The roles themselves, on a managed database without a superuser: sql/roles.sql and
-- docs/roles.md. Four kinds of role meet changecast:
--
-- 1. The changecast role runs `changecast migrate`/`serve` and owns schema changecast,
--    its journal and its functions. It needs no superuser, owns no application table and
--    is a member of no other role: `watch()` gives it SELECT on each watched table (for
--    snapshots) and nothing more. (Before changecast's migration V13 it had to own
--    watched tables or be a member of their owners' roles; `select * from
--    changecast.role_findings()` names such memberships, which can now be revoked.)
--
-- 2. The application's migration role (watcher_role), which owns its tables: USAGE on
--    the schema and EXECUTE on watch()/unwatch(). It watches tables it owns (a member of
--    the owning role with its privileges may too). Grant it only to roles trusted to
--    write events for every tenant: whoever may watch a table may fill its tenant column
--    with any tenant.
--    watch() and unwatch() run with the CALLER's rights (only a table's owner may grant
--    the changecast role SELECT on it) and are code owned by the changecast role, which
--    could replace them: call them as the table's owner, never as a superuser (a
--    superuser runs `set role <owner>` first). The changecast role must keep no CREATE
--    on schema public (docs/roles.md, step 3).
--    It also gets EXECUTE on the trigger functions capture() and capture_truncate():
--    adding a partition to a watched partitioned table clones the capture trigger, which
--    needs it. Safe: both refuse any table and arguments not registered by watch().
--    For a table outside schema public, the schema's owner grants the changecast role
--    USAGE on it before watch() (which says so otherwise):
--      grant usage on schema <app_schema> to <changecast_role>;
--
-- 3. Application roles that read and write watched tables (app_role) need NOTHING in
--    changecast for their changes to be captured: the triggers write the journal as the
--    changecast role. To send application events with `changecast.publish()` they need
--    EXECUTE on it; like watch(), it may address any tenant.
--
-- 4. The admin role that made the others (sql/roles.sql) needs nothing here.

\set ON_ERROR_STOP on

\if :{?watcher_role}
grant usage on schema changecast to :"watcher_role";
grant execute on function changecast.watch(regclass, text, text, text, text[]),
                          changecast.unwatch(regclass),
                          changecast.capture(),
                          changecast.capture_truncate()
   to :"watcher_role";
\else
\echo 'watcher_role not set (-v watcher_role=...): no role may call watch()/unwatch() but the changecast role'
\endif

\if :{?app_role}
grant usage on schema changecast to :"app_role";
grant execute on function changecast.publish(text, text, jsonb) to :"app_role";
\endif

-- Never grant to application roles: INSERT/UPDATE/DELETE on changecast's tables
-- (change_log, watched, journal_meta, journal_ticks, cursor_key), EXECUTE on its other
-- functions (attach(), register(), ...; capture() and capture_truncate() only to the
-- watcher role, above), membership in the changecast role. (`changecast.watch_requests`
-- takes INSERTs of its request columns from anyone: its trigger carries out only what
-- the table's owner, granted watch(), asked for.) Check with:
--
--   select p.oid::regprocedure, r.rolname
--   from pg_proc p, pg_roles r
--   where p.pronamespace = 'changecast'::regnamespace
--     and has_function_privilege(r.oid, p.oid, 'execute') and not r.rolsuper;
--
-- What the changecast role may do with application tables (expect SELECT on watched
-- ones only):
--
--   select c.oid::regclass, a.privilege_type
--   from pg_class c, aclexplode(c.relacl) a
--   where a.grantee = (select nspowner from pg_namespace where nspname = 'changecast')
--     and c.relnamespace <> 'changecast'::regnamespace;
