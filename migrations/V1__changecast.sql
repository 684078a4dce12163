-- changecast: the journal, the change trigger and watch()/unwatch().
--
-- Every row change of a watched table is written to changecast.change_log inside the
-- writer's own transaction, together with the transaction bookkeeping that makes a
-- gapless resume possible (see src/journal/mod.rs), and wakes the service with a
-- payload-less NOTIFY. The journal is the truth; the notification is only a doorbell.

-- (The service creates the schema before refinery runs: its history table lives there.)
create schema if not exists changecast;

-- One row: facts about this journal that cursors and pruning need.
create table changecast.journal_meta (
    singleton      boolean primary key default true check (singleton),
    -- Ties cursors to this journal: a cursor minted by another database is recognised.
    journal_id     uuid not null default gen_random_uuid(),
    -- Where this journal lives: cluster system identifier and database oid. A copy
    -- elsewhere (restore, template) has other transaction ids or other rows, so the
    -- service starts the journal over there (see src/db/mod.rs).
    home           text,
    -- Rows of every transaction below this id may have been pruned: a cursor whose
    -- snapshot does not see all of them may have needed one, so it gets `cursor_expired`.
    pruned_below   xid8 not null default '0'
);
insert into changecast.journal_meta default values;

-- Ticks of the pruner: at `taken_at`, every transaction below `horizon` had ended. Rows
-- of such a transaction committed before `taken_at`, so once a tick is older than the
-- retention period its horizon bounds what may be pruned (by commit, not insert, time:
-- a long transaction's rows are kept as long as any other's).
create table changecast.journal_ticks (
    taken_at  timestamptz primary key,
    horizon   xid8 not null
);

create table changecast.change_log (
    id              bigint generated always as identity primary key,
    tenant_id       text not null,
    resource_type   text not null,
    event           text not null check (event in ('created', 'updated', 'deleted')),
    resource_id     text not null,
    -- The new row; the old row for `deleted`.
    resource        jsonb not null,
    occurred_at     timestamptz not null default clock_timestamp(),
    -- The writer's transaction ...
    xid             xid8 not null default pg_current_xact_id(),
    -- ... and the snapshot its statement ran with: every transaction visible in it
    -- committed before this row was written (and so before this row's commit).
    writer_snapshot pg_snapshot not null default pg_current_snapshot()
);

-- The tailer reads "rows of transactions that committed between two snapshots".
create index change_log_xid on changecast.change_log (xid);
-- A resuming subscriber reads its tenant's rows the cursor's snapshot did not see.
create index change_log_tenant_xid on changecast.change_log (tenant_id, xid);

-- Which tables are watched, as which resource type.
create table changecast.watched (
    table_name     regclass primary key,
    resource_type  text not null unique,
    tenant_column  text not null,
    id_column      text not null
);

/*
 * Function: changecast.capture()  (trigger)
 * Parameters (trigger arguments): resource_type, tenant_column, id_column
 * Returns: null (AFTER ROW trigger)
 * Algorithm:
 *   Serialise the new row (old row for DELETE) with to_jsonb; skip an UPDATE whose row
 *   is unchanged; refuse a row without tenant or id; append it to the journal; NOTIFY
 *   with an empty payload, which PostgreSQL folds to one notification per transaction.
 *   An UPDATE that moves a row to another tenant (or id) is journalled as `deleted` of
 *   the old row for the old tenant and `created` of the new one, so both sides learn.
 * Security definer, so application roles need no rights on the journal.
 */
create function changecast.capture() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    changed   jsonb;
    previous  jsonb;
    kind      text;
    tenant    text;
    row_id    text;
begin
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
    perform pg_notify('changecast', '');
    return null;
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
 */
create function changecast.watch(
    target regclass,
    resource_type text,
    tenant_column text default 'tenant_id',
    id_column text default 'id'
) returns void
language plpgsql as $$
begin
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

    if exists (select 1 from pg_trigger where tgrelid = target and tgname = 'changecast_capture') then
        execute format('drop trigger changecast_capture on %s', target);
    end if;
    execute format('create trigger changecast_capture after insert or update or delete on %s '
                   'for each row execute function changecast.capture(%L, %L, %L)',
                   target, resource_type, tenant_column, id_column);
end
$$;

/*
 * Function: changecast.unwatch(table)
 * Returns: true when the table was watched. Its journal rows stay until pruned.
 */
create function changecast.unwatch(target regclass) returns boolean
language plpgsql as $$
begin
    if exists (select 1 from pg_trigger where tgrelid = target and tgname = 'changecast_capture') then
        execute format('drop trigger changecast_capture on %s', target);
    end if;
    delete from changecast.watched where table_name = target;
    return found;
end
$$;
