-- changecast: the capture trigger rings the doorbell itself (performance issue #8).
--
-- V7 made `changecast.ring()` a try of an advisory lock. Called from the capture trigger
-- with `perform`, it still costs a query through SPI and a PL/pgSQL call that sets
-- search_path: inserting 20,000 rows in one statement into a watched table (min of 7,
-- journal emptied between runs) took 73 µs per row with the call, 61 µs with the same
-- test written inline, and 63 µs with no doorbell at all. The trigger now tests the lock
-- itself, exactly as `ring()` does (same key, same meaning: see V7); `publish()` and the
-- TRUNCATE trigger, which run once per statement or event, still call `ring()`.
-- src/journal/doorbell.rs (`LOCK`) names the same key.

/*
 * Function: changecast.capture()  (row trigger)
 * Parameters (trigger arguments): resource_type, tenant_column, id_column
 * Returns: null (AFTER ROW trigger)
 * Algorithm: as in V6, with `changecast.ring()` written inline.
 */
create or replace function changecast.capture() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    excluded  text[];
    changed   jsonb;
    previous  jsonb;
    old_values jsonb;
    kind      text;
    tenant    text;
    row_id    text;
begin
    select w.exclude_columns into excluded from changecast.watched w
     where w.table_name = tg_relid
       and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
    if not found then
        select w.exclude_columns into excluded from changecast.watched w
         where w.table_name in (select relid from pg_partition_ancestors(tg_relid))
           and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
        if not found then
            raise exception 'changecast: %.% is not watched as "%" (tenant column "%", id column "%")',
                    tg_table_schema, tg_table_name, tg_argv[0], tg_argv[1], tg_argv[2]
                using errcode = 'insufficient_privilege',
                      hint = 'attach the trigger with changecast.watch()';
        end if;
    end if;

    -- (`- excluded` copies the row's JSON: only when there is something to remove.)
    if tg_op = 'INSERT' then
        changed := to_jsonb(new);
        if excluded <> '{}' then
            changed := changed - excluded;
        end if;
        kind := 'created';
    elsif tg_op = 'UPDATE' then
        changed := to_jsonb(new);
        previous := to_jsonb(old);
        if excluded <> '{}' then
            changed := changed - excluded;
            previous := previous - excluded;
        end if;
        select jsonb_object_agg(p.key, p.value) into old_values
          from jsonb_each(previous) p
         where changed -> p.key is distinct from p.value;
        if old_values is null then
            return null;
        end if;
        kind := 'updated';
        if (previous ->> tg_argv[1], previous ->> tg_argv[2])
           is distinct from (changed ->> tg_argv[1], changed ->> tg_argv[2]) then
            kind := 'created';
            old_values := null;
            if previous ->> tg_argv[1] is not null and previous ->> tg_argv[2] is not null then
                insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                values (previous ->> tg_argv[1], tg_argv[0], 'deleted', previous ->> tg_argv[2], previous);
            end if;
        end if;
    else
        changed := to_jsonb(old);
        if excluded <> '{}' then
            changed := changed - excluded;
        end if;
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

    insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource, old)
    values (tenant, tg_argv[0], kind, row_id, changed, old_values);
    -- changecast.ring(), inlined: a PL/pgSQL call through SPI cost about 10 µs per row,
    -- a sixth of the whole trigger (V8's header).
    if not pg_try_advisory_xact_lock_shared(1667458146, 1) then
        perform pg_notify('changecast', '');
    end if;
    return null;
end
$$;
