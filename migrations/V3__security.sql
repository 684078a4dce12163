-- changecast: the database side of security (issue #7 items 2, 3, 8, 9).
--
-- * Every changecast function runs with `search_path = pg_catalog, pg_temp`, so nothing
--   a caller (or whoever may create objects in a schema on the caller's path) plants
--   can stand in for a built-in.
-- * Nobody but the owner of this schema may execute its functions unless granted:
--   the journal can be written only by the triggers `watch()` attached, and those check
--   on every row that `changecast.watched` names their table with their arguments.
--   `watch()` and `unwatch()` are SECURITY DEFINER (they attach triggers whose function
--   callers may not execute), are granted explicitly (see sql/grants.sql), and check
--   that the calling session's role could have put a trigger on the table itself.
-- * The triggers fire ALWAYS, also under `session_replication_role = replica` (logical
--   replication apply, `pg_restore --disable-triggers`); TRUNCATE journals one
--   `truncated` marker per affected tenant, and subscribers resync.
-- * `changecast.watched` entries of dropped tables are recognised (no trigger of ours on
--   that oid any more) and removed by the next `watch()`.
--
-- Only `alter table ... disable trigger` (by the table's owner or a superuser) still
-- writes past the journal: PostgreSQL offers no way to forbid it short of an event
-- trigger, which needs a superuser.

-- A journal row may now also mark a TRUNCATE: resource_id '' and resource '{}'.
alter table changecast.change_log
    drop constraint change_log_event_check,
    add constraint change_log_event_check
        check (event in ('created', 'updated', 'deleted', 'truncated'));

/*
 * Function: changecast.is_attached(table)
 * Returns: whether `table` still exists and carries the capture trigger of ours. A
 *   `changecast.watched` row whose table was dropped keeps a dangling oid, which a new
 *   table may later reuse; such a table has no trigger of ours (only `watch()`, which
 *   rewrites the row, attaches one), so this tells live entries from stale ones. Renaming
 *   a watched table keeps it watched.
 */
create function changecast.is_attached(target oid) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select 1 from pg_catalog.pg_trigger t
                   where t.tgrelid = target and t.tgname = 'changecast_capture'
                     and t.tgfoid = 'changecast.capture()'::pg_catalog.regprocedure)
$$;

/*
 * Function: changecast.capture()  (row trigger)
 * Parameters (trigger arguments): resource_type, tenant_column, id_column
 * Returns: null (AFTER ROW trigger)
 * Algorithm: as in V1, after one check: `changecast.watched` must name this table with
 *   exactly these arguments (a primary-key lookup), else the row is refused. Only the
 *   schema owner may attach this function, but the check also holds if one did so by
 *   hand: a trigger on an unwatched table, or with another resource type or tenant
 *   column, can never put rows into a tenant's stream. Partitions of a watched
 *   partitioned table carry its trigger as clones; the (cold) fallback finds the parent.
 * Security definer, so application roles need no rights on the journal.
 */
/*
 * Function: changecast.ring()
 * Wakes the service: a payload-less NOTIFY, which PostgreSQL folds to one per
 * transaction. Its own function so that when to ring can change in one place (V5).
 */
create function changecast.ring() returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    perform pg_notify('changecast', '');
end
$$;

create or replace function changecast.capture() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    changed   jsonb;
    previous  jsonb;
    kind      text;
    tenant    text;
    row_id    text;
begin
    perform 1 from changecast.watched w
     where w.table_name = tg_relid
       and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
    if not found then
        perform 1 from changecast.watched w
         where w.table_name in (select relid from pg_partition_ancestors(tg_relid))
           and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
        if not found then
            raise exception 'changecast: %.% is not watched as "%" (tenant column "%", id column "%")',
                    tg_table_schema, tg_table_name, tg_argv[0], tg_argv[1], tg_argv[2]
                using errcode = 'insufficient_privilege',
                      hint = 'attach the trigger with changecast.watch()';
        end if;
    end if;

    if tg_op = 'INSERT' then
        changed := to_jsonb(new);
        kind := 'created';
    elsif tg_op = 'UPDATE' then
        changed := to_jsonb(new);
        previous := to_jsonb(old);
        if changed = previous then
            return null;
        end if;
        kind := 'updated';
        if (previous ->> tg_argv[1], previous ->> tg_argv[2])
           is distinct from (changed ->> tg_argv[1], changed ->> tg_argv[2]) then
            kind := 'created';
            if previous ->> tg_argv[1] is not null and previous ->> tg_argv[2] is not null then
                insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                values (previous ->> tg_argv[1], tg_argv[0], 'deleted', previous ->> tg_argv[2], previous);
            end if;
        end if;
    else
        changed := to_jsonb(old);
        kind := 'deleted';
    end if;

    tenant := changed ->> tg_argv[1];
    if tenant is null then
        raise exception 'changecast: row of %.% has no tenant (column "%" is null)',
                tg_table_schema, tg_table_name, tg_argv[1]
            using errcode = 'not_null_violation',
                  hint = 'every row of a watched table must name its tenant';
    end if;
    row_id := changed ->> tg_argv[2];
    if row_id is null then
        raise exception 'changecast: row of %.% has no id (column "%" is null)',
                tg_table_schema, tg_table_name, tg_argv[2]
            using errcode = 'not_null_violation';
    end if;

    insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
    values (tenant, tg_argv[0], kind, row_id, changed);
    perform changecast.ring();
    return null;
end
$$;

/*
 * Function: changecast.capture_truncate()  (BEFORE TRUNCATE statement trigger)
 * Parameters (trigger arguments): resource_type, tenant_column, id_column
 * Returns: null
 * Algorithm: the same check as capture(); then, before the table is emptied, journal
 *   one `truncated` marker (resource_id '', resource '{}') for every tenant that has
 *   rows in it, so each tenant's subscribers resync instead of silently keeping rows
 *   that are gone. Tenants are compared bytewise (collate "C"): a case-insensitive
 *   column collation must not merge two tenants into one marker. Costs one scan of the
 *   tenant column (an index-only scan where it is indexed).
 */
create function changecast.capture_truncate() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    perform 1 from changecast.watched w
     where w.table_name = tg_relid
       and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
    if not found then
        raise exception 'changecast: %.% is not watched as "%" (tenant column "%", id column "%")',
                tg_table_schema, tg_table_name, tg_argv[0], tg_argv[1], tg_argv[2]
            using errcode = 'insufficient_privilege',
                  hint = 'attach the trigger with changecast.watch()';
    end if;
    execute format('insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                    select distinct t.%1$I::text collate "C", $1, ''truncated'', '''', ''{}''::jsonb
                    from %2$I.%3$I t where t.%1$I is not null',
                   tg_argv[1], tg_table_schema, tg_table_name)
        using tg_argv[0];
    perform changecast.ring();
    return null;
end
$$;

/*
 * Function: changecast.attach(table, resource_type, tenant_column, id_column)
 * Returns: void. (Re)creates the capture and truncate triggers of `table` with these
 *   arguments and makes them fire ALWAYS (also in replica mode). Internal: runs as the
 *   schema owner, which must own the table or be a member of its owning role.
 */
create function changecast.attach(target regclass, resource_type text, tenant_column text, id_column text)
returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
    qualified text := (select format('%I.%I', n.nspname, c.relname)
                       from pg_class c join pg_namespace n on n.oid = c.relnamespace
                       where c.oid = target);
begin
    if not (select pg_has_role(current_user, c.relowner, 'USAGE') from pg_class c where c.oid = target) then
        raise exception 'changecast: role "%" (owner of schema changecast) may not attach triggers to %', current_user, qualified
            using errcode = 'insufficient_privilege',
                  hint = 'the changecast role must own watched tables or be a member of their owning role (see sql/grants.sql)';
    end if;
    if exists (select 1 from pg_trigger where tgrelid = target and tgname = 'changecast_capture') then
        execute format('drop trigger changecast_capture on %s', qualified);
    end if;
    if exists (select 1 from pg_trigger where tgrelid = target and tgname = 'changecast_truncate') then
        execute format('drop trigger changecast_truncate on %s', qualified);
    end if;
    execute format('create trigger changecast_capture after insert or update or delete on %s '
                   'for each row execute function changecast.capture(%L, %L, %L)',
                   qualified, resource_type, tenant_column, id_column);
    execute format('create trigger changecast_truncate before truncate on %s '
                   'for each statement execute function changecast.capture_truncate(%L, %L, %L)',
                   qualified, resource_type, tenant_column, id_column);
    execute format('alter table %s enable always trigger changecast_capture, '
                   'enable always trigger changecast_truncate', qualified);
end
$$;

/*
 * Function: changecast.watch(table, resource_type, tenant_column, id_column)
 * Parameters:
 *   target         the table, e.g. 'public.tickets'
 *   resource_type  the name subscribers filter on, e.g. 'ticket' ([a-z][a-z0-9_]*)
 *   tenant_column  column naming the row's tenant (default tenant_id)
 *   id_column      column identifying the row (default id)
 * Returns: void. Idempotent: watching a table again replaces its settings.
 * Algorithm: check that the calling session's role (session_user: inside a security
 *   definer function current_user is the owner) holds TRIGGER and SELECT on the table,
 *   i.e. could have attached a trigger that reads its rows without us; forget entries of
 *   dropped tables; record the table; attach the triggers (changecast.attach).
 * Security definer: the trigger functions are not executable by callers, and
 *   `changecast.watched` is not writable by them. Executable only where granted: whoever
 *   may watch a table may put events into any tenant's stream (the tenant column is
 *   theirs to fill), so this is a right for trusted schema-owning roles.
 */
create or replace function changecast.watch(
    target regclass,
    resource_type text,
    tenant_column text default 'tenant_id',
    id_column text default 'id'
) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    if target is null then
        raise exception 'changecast.watch: no table given' using errcode = 'null_value_not_allowed';
    end if;
    if not (has_table_privilege(session_user, target, 'TRIGGER')
            and has_table_privilege(session_user, target, 'SELECT')) then
        raise exception 'changecast.watch: role "%" may not watch % (it needs TRIGGER and SELECT on it)',
                session_user, target
            using errcode = 'insufficient_privilege';
    end if;
    if (select c.relkind not in ('r', 'p') or c.relpersistence = 't' from pg_class c where c.oid = target) then
        raise exception 'changecast.watch: % is not a permanent table', target
            using errcode = 'wrong_object_type';
    end if;
    if resource_type is null or resource_type !~ '^[a-z][a-z0-9_]{0,62}$' then
        raise exception 'changecast.watch: resource type % must match [a-z][a-z0-9_]* (at most 63 characters)',
                coalesce(quote_literal(resource_type), 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    if not exists (select 1 from pg_attribute
                   where attrelid = target and attname = tenant_column
                     and attnum > 0 and not attisdropped) then
        raise exception 'changecast.watch: table % has no tenant column "%"', target, tenant_column
            using errcode = 'undefined_column';
    end if;
    if not exists (select 1 from pg_attribute
                   where attrelid = target and attname = id_column
                     and attnum > 0 and not attisdropped) then
        raise exception 'changecast.watch: table % has no id column "%"', target, id_column
            using errcode = 'undefined_column';
    end if;

    -- Entries of dropped tables name nothing any more: their resource types are free.
    delete from changecast.watched w where not changecast.is_attached(w.table_name);
    if exists (select 1 from changecast.watched w
               where w.resource_type = watch.resource_type and w.table_name <> target) then
        raise exception 'changecast.watch: resource type "%" already names another table', resource_type
            using errcode = 'unique_violation';
    end if;

    insert into changecast.watched (table_name, resource_type, tenant_column, id_column)
    values (target, watch.resource_type, watch.tenant_column, watch.id_column)
    on conflict (table_name) do update
        set resource_type = excluded.resource_type,
            tenant_column = excluded.tenant_column,
            id_column = excluded.id_column;
    perform changecast.attach(target, resource_type, tenant_column, id_column);
end
$$;

/*
 * Function: changecast.unwatch(table)
 * Returns: true when the table was watched. Its journal rows stay until pruned.
 * Security definer, with the same check of the calling session's role as watch().
 */
create or replace function changecast.unwatch(target regclass) returns boolean
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    qualified text := (select format('%I.%I', n.nspname, c.relname)
                       from pg_class c join pg_namespace n on n.oid = c.relnamespace
                       where c.oid = target);
begin
    if not has_table_privilege(session_user, target, 'TRIGGER') then
        raise exception 'changecast.unwatch: role "%" may not unwatch % (it needs TRIGGER on it)',
                session_user, target
            using errcode = 'insufficient_privilege';
    end if;
    if exists (select 1 from pg_trigger where tgrelid = target and tgname = 'changecast_capture') then
        execute format('drop trigger changecast_capture on %s', qualified);
    end if;
    if exists (select 1 from pg_trigger where tgrelid = target and tgname = 'changecast_truncate') then
        execute format('drop trigger changecast_truncate on %s', qualified);
    end if;
    delete from changecast.watched where table_name = target;
    return found;
end
$$;

-- Existing watched tables: forget dropped ones, give the live ones the truncate trigger
-- and make both fire ALWAYS. A table this role may not alter keeps its V1 trigger (still
-- capturing ordinary writes) and is named in a warning: re-run watch() for it once this
-- role owns the table or is a member of its owning role.
delete from changecast.watched w where not changecast.is_attached(w.table_name);
do $$
declare
    w record;
begin
    for w in select * from changecast.watched order by resource_type loop
        begin
            perform changecast.attach(w.table_name, w.resource_type, w.tenant_column, w.id_column);
        exception when insufficient_privilege then
            raise warning 'changecast: could not convert the triggers of %: %', w.table_name, sqlerrm
                using hint = format('run select changecast.watch(%L, %L, %L, %L) once role %I may alter the table',
                                    w.table_name::text, w.resource_type, w.tenant_column, w.id_column, current_user);
        end;
    end loop;
end
$$;

-- Privileges: nothing in the schema is anybody's but its owner's unless granted
-- (sql/grants.sql shows the grants an operator gives). `create or replace` kept the old
-- PUBLIC grants of watch() and unwatch(); new functions get PUBLIC EXECUTE by default.
revoke all on all functions in schema changecast from public;
revoke all on all tables in schema changecast from public;
revoke all on all sequences in schema changecast from public;
revoke create on schema changecast from public;
-- Functions this role creates later (in any schema: PostgreSQL cannot revoke a default
-- privilege per schema) start without PUBLIC EXECUTE; later migrations grant what is
-- meant to be called, e.g. `changecast.publish`.
alter default privileges revoke execute on functions from public;
