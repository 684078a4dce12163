-- changecast: application events, what changed, secrets kept (issue #9, API.md §2, §4, §8).
--
-- * `changecast.publish(tenant, topic, payload)` writes an application event into the
--   journal (an outbox): delivered when the caller's transaction commits, never when it
--   rolls back, with the same cursors, resume, retention and tenant rules as row changes.
--   Journal form: event 'published', resource_type = the topic, resource = the payload.
-- * An `updated` journal row carries `old`: the previous values of exactly the columns
--   that changed. `changed`, `old` and a filtered view's enter/leave all follow from it.
-- * `watch(..., exclude_columns => array[...])`: those columns are removed from the row
--   in the trigger, before anything is written, so they never reach the journal; an
--   update that changes only them journals nothing.

alter table changecast.change_log
    add column old jsonb,
    drop constraint change_log_event_check,
    add constraint change_log_event_check
        check (event in ('created', 'updated', 'deleted', 'truncated', 'published'));

alter table changecast.watched
    add column exclude_columns text[] not null default '{}';

/*
 * Function: changecast.capture()  (row trigger)
 * Parameters (trigger arguments): resource_type, tenant_column, id_column
 * Returns: null (AFTER ROW trigger)
 * Algorithm: as in V3 (the table must be watched with exactly these arguments), and:
 *   the row loses the watched entry's excluded columns first; an UPDATE journals the
 *   previous values of the columns whose values differ (`old`), and nothing when none
 *   does.
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
    perform changecast.ring();
    return null;
end
$$;

-- watch() gains a parameter: the old signature goes, its grants move to the new one.
create temporary table watch_grantees as
    select distinct r.rolname
    from pg_proc p, aclexplode(p.proacl) a, pg_roles r
    where p.oid = 'changecast.watch(regclass, text, text, text)'::regprocedure
      and a.privilege_type = 'EXECUTE' and r.oid = a.grantee and r.oid <> p.proowner;
drop function changecast.watch(regclass, text, text, text);

/*
 * Function: changecast.watch(table, resource_type, tenant_column, id_column, exclude_columns)
 * Parameters:
 *   target           the table, e.g. 'public.tickets'
 *   resource_type    the name subscribers filter on, e.g. 'ticket' ([a-z][a-z0-9_]*)
 *   tenant_column    column naming the row's tenant (default tenant_id)
 *   id_column        column identifying the row (default id)
 *   exclude_columns  columns that never leave the database (default none): not in any
 *                    event, `changed`, `old`, snapshot or the journal
 * Returns: void. Idempotent: watching a table again replaces its settings.
 * Algorithm: as in V3, and each excluded column must exist and be neither the tenant
 *   nor the id column.
 * Security definer, executable only where granted (see V3 and sql/grants.sql).
 */
create function changecast.watch(
    target regclass,
    resource_type text,
    tenant_column text default 'tenant_id',
    id_column text default 'id',
    exclude_columns text[] default '{}'
) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    excluded text;
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
    if exclude_columns is null or array_position(exclude_columns, null) is not null then
        raise exception 'changecast.watch: exclude_columns must be an array of column names without nulls'
            using errcode = 'null_value_not_allowed';
    end if;
    foreach excluded in array exclude_columns loop
        if excluded in (tenant_column, id_column) then
            raise exception 'changecast.watch: column "%" of % names the tenant or the id and cannot be excluded',
                    excluded, target
                using errcode = 'invalid_parameter_value';
        end if;
        if not exists (select 1 from pg_attribute
                       where attrelid = target and attname = excluded
                         and attnum > 0 and not attisdropped) then
            raise exception 'changecast.watch: table % has no column "%" to exclude', target, excluded
                using errcode = 'undefined_column';
        end if;
    end loop;

    -- Entries of dropped tables name nothing any more: their resource types are free.
    delete from changecast.watched w where not changecast.is_attached(w.table_name);
    if exists (select 1 from changecast.watched w
               where w.resource_type = watch.resource_type and w.table_name <> target) then
        raise exception 'changecast.watch: resource type "%" already names another table', resource_type
            using errcode = 'unique_violation';
    end if;

    insert into changecast.watched (table_name, resource_type, tenant_column, id_column, exclude_columns)
    values (target, watch.resource_type, watch.tenant_column, watch.id_column,
            array(select distinct unnest(watch.exclude_columns) order by 1))
    on conflict (table_name) do update
        set resource_type = excluded.resource_type,
            tenant_column = excluded.tenant_column,
            id_column = excluded.id_column,
            exclude_columns = excluded.exclude_columns;
    perform changecast.attach(target, resource_type, tenant_column, id_column);
end
$$;

do $$
declare
    grantee text;
begin
    for grantee in select rolname from watch_grantees loop
        execute format('grant execute on function changecast.watch(regclass, text, text, text, text[]) to %I', grantee);
    end loop;
end
$$;
drop table watch_grantees;

/*
 * Function: changecast.publish(tenant_id, topic, payload)
 * Parameters:
 *   tenant_id  the tenant whose subscribers get the event (not null, not empty)
 *   topic      [a-z][a-z0-9_.:-]*, at most 63 characters, not a built-in event's name
 *   payload    any JSON value (default {})
 * Returns: void. The event is journalled in the caller's transaction: delivered when it
 *   commits, never when it rolls back. Rings like a row change (no NOTIFY while the
 *   service drains the journal anyway).
 * Security definer (callers need no rights on the journal); executable only where
 *   granted (sql/grants.sql): whoever may publish may address any tenant.
 */
create function changecast.publish(tenant_id text, topic text, payload jsonb default '{}')
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    if tenant_id is null or tenant_id = '' then
        raise exception 'changecast.publish: tenant_id must not be null or empty'
            using errcode = 'null_value_not_allowed';
    end if;
    if topic is null or topic !~ '^[a-z][a-z0-9_.:-]{0,62}$' then
        raise exception 'changecast.publish: topic % must match [a-z][a-z0-9_.:-]* (at most 63 characters)',
                coalesce(quote_literal(topic), 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    -- Names the transports use for their own events (and `message`, EventSource's
    -- default): an application event by such a name would be mistaken for one.
    if topic in ('resource_change', 'app_event', 'resync', 'auth_expired', 'reconnect', 'stats',
                 'heartbeat', 'keepalive', 'ping', 'pong', 'error', 'message', 'subscribe',
                 'unsubscribe', 'connection_established', 'subscription_confirmed') then
        raise exception 'changecast.publish: topic "%" is reserved for a built-in event', topic
            using errcode = 'invalid_parameter_value';
    end if;
    if payload is null then
        raise exception 'changecast.publish: payload must not be null (use ''{}'')'
            using errcode = 'null_value_not_allowed';
    end if;
    insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
    values (publish.tenant_id, publish.topic, 'published', '', publish.payload);
    perform changecast.ring();
end
$$;

revoke all on function changecast.publish(text, text, jsonb) from public;
revoke all on function changecast.watch(regclass, text, text, text, text[]) from public;
