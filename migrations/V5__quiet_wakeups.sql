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
    -- The doorbell, unless every running service instance is draining the journal
    -- anyway (see changecast.listeners): a transaction that issued NOTIFY commits under a
    -- database-wide lock, one at a time, so skipping it under load keeps group commit.
    if exists (select 1 from changecast.listeners where not draining) then
        perform pg_notify('changecast', '');
    end if;
    return null;
end
$$;

create or replace function changecast.capture_truncate() returns trigger
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
    -- The doorbell, unless every running service instance is draining the journal
    -- anyway (see changecast.listeners): a transaction that issued NOTIFY commits under a
    -- database-wide lock, one at a time, so skipping it under load keeps group commit.
    if exists (select 1 from changecast.listeners where not draining) then
        perform pg_notify('changecast', '');
    end if;
    return null;
end
$$;
