-- changecast: excluded columns by identity, and no table owner's code with our rights
-- (API.md §2).
--
-- * Excluded columns are kept by attribute number of the watched table, so a renamed
--   column stays excluded: the trigger and snapshots look up its current name. The names
--   given to watch() stay excluded too, so a column dropped and added again under such a
--   name (a new number) stays out as well: what fails is closed.
-- * The capture trigger runs as the owner of this schema (SECURITY DEFINER), and
--   snapshots read watched tables as the service's role. `to_jsonb` calls a cast to json
--   of a column's type when one exists, and the owner of a type may create such a cast
--   with a function of its own. A value whose type somebody other than a superuser owns
--   (an enum, a range, a composite, a base type handed to another role) is therefore
--   never given to `to_jsonb`: it is written through its type's output function (what
--   `to_jsonb` writes when there is no cast), which only a superuser can have written.
--   Arrays of such values stay arrays of those texts; a composite value of such a type,
--   or containing one, is written as its text. Types owned by a superuser (built-in
--   types, PostGIS, citext) keep their casts: only a superuser can create a cast from
--   them.
--   Which columns are affected follows from the column types alone, never from which
--   casts exist, because pg_cast read through a transaction's (older) snapshot may miss a
--   cast that `to_jsonb` would still find.
-- * The trigger must know the columns of the row it is given. A READ COMMITTED
--   statement's catalog reads are current: it holds its lock on the table, so no column
--   can change under it. A REPEATABLE READ (or SERIALIZABLE) transaction reads the catalog
--   as of its snapshot, which may predate a column the row has: when the table's pg_class
--   row, or a pg_attribute row of its columns, it sees was replaced since by a committed
--   transaction, the write is refused as a serialization failure (retry it).
-- * Most tables hold no type a non-superuser owns. Their registration remembers the
--   pg_class row (column count and file) for which that was found (`plain_natts`,
--   `plain_filenode`); while the table's row still says so, the trigger writes the row
--   with `to_jsonb` at once. Anything that adds a column or changes a column's type to
--   another stored form changes one of the two (a TRUNCATE too); the trigger then looks
--   again, and remembers what it found. Only a superuser can hand a type to a
--   non-superuser (or take a role's superuser right), so what was found stays true
--   until a superuser acts; `watch()` looks afresh.

alter table changecast.watched
    add column exclude_attnums int2[] not null default '{}',
    add column plain_natts int2,
    add column plain_filenode oid;

comment on column changecast.watched.exclude_columns is
    'The names given to watch(), read by instances of the previous version during a rolling upgrade; the trigger and snapshots go by exclude_attnums.';
comment on column changecast.watched.exclude_attnums is
    'Excluded columns, as attribute numbers of table_name: a rename keeps them excluded.';
comment on column changecast.watched.plain_natts is
    'With plain_filenode: the pg_class row of table_name whose columns were found to hold no type a non-superuser owns (null: not known).';
comment on column changecast.watched.plain_filenode is
    'See plain_natts.';

/*
 * Function: changecast.excluded_names(table, attnums)
 * Returns: the current names of those columns of `table` (a dropped one has none).
 */
create function changecast.excluded_names(target oid, attnums int2[]) returns text[]
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
    return (select coalesce(array_agg(a.attname::text order by a.attnum), '{}')
        from pg_catalog.pg_attribute a
        where a.attrelid = target and a.attnum = any(attnums) and not a.attisdropped);
end
$$;

/*
 * Function: changecast.owned_columns(table)
 * Returns: the columns of `table` whose value holds, somewhere inside, a value of a type
 *   a non-superuser owns, and how it sits there: 's' the column's own type (through
 *   domains), 'a' the elements of an array column, 'o' deeper (inside a composite).
 * Algorithm: follow each column's type the way `to_jsonb` does (a domain to its base
 *   type, an array to its element type, a composite to its attributes' types) down to
 *   types that are none of these. A composite type a non-superuser owns is itself such
 *   a value: its owner may give it an attribute of any type at any time, without
 *   touching the tables that use it. Built-in types (oid < 16384) are a superuser's and
 *   hold only built-in types, so the walk stops at them.
 */
create function changecast.owned_columns(target oid)
returns table (column_name text, shape "char")
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
    return query
    with recursive walk (column_name, type_oid, depth) as (
            select a.attname::text, a.atttypid, 0
            from pg_catalog.pg_attribute a
            where a.attrelid = target and a.attnum > 0 and not a.attisdropped
              and a.atttypid >= 16384
          union all
            select w.column_name, inner_type.oid, inner_type.depth
            from walk w
            join pg_catalog.pg_type t on t.oid = w.type_oid
            join pg_catalog.pg_roles r on r.oid = t.typowner
            cross join lateral (
                select t.typbasetype, w.depth
                where t.typtype = 'd'
              union all
                select t.typelem, w.depth + 1
                where t.typtype <> 'd' and t.typelem <> 0
                  and t.typlen = -1
              union all
                select a.atttypid, 2
                from pg_catalog.pg_attribute a
                where t.typtype = 'c' and r.rolsuper and a.attrelid = t.typrelid
                  and a.attnum > 0 and not a.attisdropped
            ) inner_type (oid, depth)
            where inner_type.oid >= 16384
        )
        select w.column_name,
               (case max(least(w.depth, 2)) when 0 then 's' when 1 then 'a' else 'o' end)::"char"
        from walk w
        join pg_catalog.pg_type t on t.oid = w.type_oid
        join pg_catalog.pg_roles r on r.oid = t.typowner
        where t.typtype <> 'd'
          and not (t.typelem <> 0 and t.typlen = -1)
          and not r.rolsuper
        group by w.column_name;
end
$$;

/*
 * Function: changecast.committed_since_snapshot(updater)
 * Returns: whether `updater`, the xmax of a row version this transaction's snapshot shows,
 *   is a transaction that committed (so a newer version of the row exists). A version
 *   with no xmax, or whose updater aborted or is still running, is current.
 * Algorithm: the full id of a 32-bit xid is taken from the epoch of the snapshot's xmax
 *   (they lie within 2^31 of each other), then asked of the commit log.
 */
create function changecast.committed_since_snapshot(updater xid) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
    return (select case when updater::text = '0' then false
                    else pg_xact_status((
                             with reference (next) as (
                                 select pg_snapshot_xmax(pg_current_snapshot())::text::bigint)
                             select (case when full_id > next + 2147483648 then full_id - 4294967296
                                          when full_id < next - 2147483648 then full_id + 4294967296
                                          else full_id end)::text::xid8
                             from reference,
                                  lateral (select (next >> 32 << 32) + updater::text::bigint) f (full_id)
                         )) is not distinct from 'committed'
               end);
end
$$;

/*
 * Function: changecast.check_definition_current(table)
 * Raises serialization_failure when the columns of `table` this transaction's snapshot
 * shows may not be the table's current ones: its pg_class row or one of its columns'
 * pg_attribute rows was replaced by a committed transaction the snapshot does not see
 * (a column added, renamed or retyped), or a column exists beyond the ones the
 * snapshot shows, or the table was rewritten (a partitioned table has no file). A
 * REPEATABLE READ transaction may write or read rows with such a column, which the
 * column walk above and the excluded columns' names would not see as they are.
 */
create function changecast.check_definition_current(target oid) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
    if (select changecast.committed_since_snapshot(c.xmax)
               or has_column_privilege(target, (c.relnatts + 1)::int2, 'SELECT') is not null
               or pg_relation_filenode(target) is distinct from nullif(c.relfilenode, 0)
        from pg_catalog.pg_class c where c.oid = target)
       or exists (select 1 from pg_catalog.pg_attribute a
                  where a.attrelid = target and a.attnum > 0 and a.xmax <> '0'::xid
                    and changecast.committed_since_snapshot(a.xmax)) then
        raise exception 'changecast: the definition of % changed after this transaction''s snapshot', target::regclass
            using errcode = 'serialization_failure',
                  hint = 'retry the transaction';
    end if;
    return true;
end
$$;

/*
 * Function: changecast.remember_plain(table)
 * Records on `table`'s registration that its pg_class row as this transaction sees it
 * has columns of built-in types only (the caller found so). Skipped when another
 * transaction holds the registration: writers never wait for each other here.
 */
create function changecast.remember_plain(target oid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
    update changecast.watched w
           set plain_natts = c.relnatts, plain_filenode = c.relfilenode
          from pg_catalog.pg_class c
         where c.oid = target
           and w.table_name = target
           and w.ctid = (select l.ctid from changecast.watched l
                         where l.table_name = target for update skip locked);
end
$$;

/*
 * Function: changecast.row_to_jsonb(table, row)
 * Returns: `row` (a row of `table`) as `to_jsonb` writes it, except that values of
 *   types a non-superuser owns are written through their output functions (see the
 *   header), so no cast of theirs runs. The caller has made sure that this transaction
 *   sees the table's columns as they are (changecast.check_definition_current).
 */
create function changecast.row_to_jsonb(target oid, source anyelement) returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    plain_columns text;
    owned_names   text[] := '{}';
    owned_values  text := '';
    owned         record;
    result        jsonb;
begin
    for owned in select * from changecast.owned_columns(target) order by 1 loop
        owned_names := owned_names || owned.column_name;
        owned_values := owned_values || format(
            ' || pg_catalog.jsonb_build_object(%L, case when pg_catalog.num_nulls(r.%I) = 0 then %s end)',
            owned.column_name, owned.column_name,
            case owned.shape
                when 'a' then format('pg_catalog.format(''%%s'', r.%I)::pg_catalog.text[]', owned.column_name)
                else format('pg_catalog.format(''%%s'', r.%I)', owned.column_name)
            end);
    end loop;
    if owned_values = '' then
        return to_jsonb(source);
    end if;
    select coalesce(string_agg(format('r.%I', a.attname), ', ' order by a.attnum), '')
      into plain_columns
      from pg_catalog.pg_attribute a
     where a.attrelid = target and a.attnum > 0 and not a.attisdropped
       and a.attname::text <> all (owned_names);
    execute format('select (select pg_catalog.to_jsonb(p) from (select %s) p)%s from (select ($1).*) r',
                   plain_columns, owned_values)
        into result
        using source;
    return result;
end
$$;

/*
 * Function: changecast.snapshot_rows_plain(table)
 * Returns: whether a snapshot may write rows of `table` with `to_jsonb` itself (no
 *   column holds a type a non-superuser owns); else it uses changecast.row_to_jsonb.
 *   Raises when the tenant column holds such a type (snapshots compare its text, and a
 *   cast to text would run), or when the definition changed after the snapshot.
 */
create function changecast.snapshot_rows_plain(target oid) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    tenant text := (select w.tenant_column from changecast.watched w where w.table_name = target);
begin
    perform changecast.check_definition_current(target);
    if exists (select 1 from changecast.owned_columns(target) o where o.column_name = tenant) then
        raise exception 'changecast: the tenant column "%" of % has a type owned by a role that is not a superuser', tenant, target::regclass
            using errcode = 'feature_not_supported',
                  hint = 'use a column of a built-in type (or a domain over one) as the tenant column';
    end if;
    return not exists (select 1 from changecast.owned_columns(target));
end
$$;

/*
 * Function: changecast.capture()  (row trigger)
 * Parameters (trigger arguments): resource_type, tenant_column, id_column
 * Returns: null (AFTER ROW trigger)
 * Algorithm: as in V8, with these changes (see the header): excluded columns are
 *   named by their current names (from the watched table's attribute numbers: a
 *   partition's columns have the names of its parent's); a transaction whose snapshot
 *   may predate the table's columns is refused; and when a column of the row's table
 *   holds a type a non-superuser owns, the row is written by changecast.row_to_jsonb
 *   instead of to_jsonb. That it has none is remembered on the registration with the
 *   table's pg_class row, so most rows need no look at the columns.
 */
create or replace function changecast.capture() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    excluded  text[];
    plain     boolean;
    registered boolean;
    old_snapshot boolean;
    typed     boolean := false;
    changed   jsonb;
    previous  jsonb;
    old_values jsonb;
    kind      text;
    tenant    text;
    row_id    text;
begin
    -- `plain`: the registration remembers the table's pg_class row (as this statement
    -- sees it) as one whose columns hold no type a non-superuser owns. A partition's
    -- row is its own.
    select case when w.exclude_columns = '{}' then '{}'
                else w.exclude_columns || changecast.excluded_names(w.table_name, w.exclude_attnums) end,
           coalesce(w.plain_natts = c.relnatts and w.plain_filenode = c.relfilenode, false),
           true,
           current_setting('transaction_isolation') <> 'read committed'
      into excluded, plain, registered, old_snapshot
      from changecast.watched w, pg_class c
     where w.table_name = tg_relid and c.oid = tg_relid
       and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
    if not found then
        select case when w.exclude_columns = '{}' then '{}'
                    else w.exclude_columns || changecast.excluded_names(w.table_name, w.exclude_attnums) end,
               false,
               false,
               current_setting('transaction_isolation') <> 'read committed'
          into excluded, plain, registered, old_snapshot
          from changecast.watched w, pg_class c
         where w.table_name in (select relid from pg_partition_ancestors(tg_relid))
           and c.oid = tg_relid
           and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
        if not found then
            raise exception 'changecast: %.% is not watched as "%" (tenant column "%", id column "%")',
                    tg_table_schema, tg_table_name, tg_argv[0], tg_argv[1], tg_argv[2]
                using errcode = 'insufficient_privilege',
                      hint = 'attach the trigger with changecast.watch()';
        end if;
    end if;
    -- What this transaction sees of the catalog is current unless its snapshot is older
    -- than the statement (REPEATABLE READ, SERIALIZABLE) and the table changed since.
    if old_snapshot then
        perform changecast.check_definition_current(tg_relid);
    end if;
    if not plain then
        typed := exists (select 1 from changecast.owned_columns(tg_relid));
        -- (Under an older snapshot, locking the registration another writer has just
        -- updated would fail the write: only READ COMMITTED writers remember.)
        if not typed and registered and not old_snapshot then
            perform changecast.remember_plain(tg_relid);
        end if;
    end if;

    -- (`- excluded` copies the row's JSON: only when there is something to remove.)
    if tg_op = 'INSERT' then
        if typed then
            changed := changecast.row_to_jsonb(tg_relid, new);
        else
            changed := to_jsonb(new);
        end if;
        if excluded <> '{}' then
            changed := changed - excluded;
        end if;
        kind := 'created';
    elsif tg_op = 'UPDATE' then
        if typed then
            changed := changecast.row_to_jsonb(tg_relid, new);
            previous := changecast.row_to_jsonb(tg_relid, old);
        else
            changed := to_jsonb(new);
            previous := to_jsonb(old);
        end if;
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
        if typed then
            changed := changecast.row_to_jsonb(tg_relid, old);
        else
            changed := to_jsonb(old);
        end if;
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
    -- changecast.ring(), inlined: a PL/pgSQL call through SPI would cost a sixth of the
    -- trigger.
    if not pg_try_advisory_xact_lock_shared(1667458146, 1) then
        perform pg_notify('changecast', '');
    end if;
    return null;
end
$$;

/*
 * Function: changecast.capture_truncate()  (BEFORE TRUNCATE statement trigger)
 * As in V3, except that a tenant column holding a type a non-superuser owns is read
 * through its output function (`format('%s', ...)`) rather than a cast to text, which
 * its owner could have created; and that the table is read with row security off, so
 * that no policy of its owner's runs with this role's rights (a table whose policies
 * would apply to this role cannot be truncated while watched: the error says why).
 */
create or replace function changecast.capture_truncate() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set row_security = off as $$
declare
    tenant_text text;
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
    perform changecast.check_definition_current(tg_relid);
    if exists (select 1 from changecast.owned_columns(tg_relid) o where o.column_name = tg_argv[1]) then
        tenant_text := format('pg_catalog.format(''%%s'', t.%I)', tg_argv[1]);
    else
        tenant_text := format('t.%I::pg_catalog.text', tg_argv[1]);
    end if;
    execute format('insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                    select distinct %1$s collate "C", $1, ''truncated'', '''', ''{}''::jsonb
                    from %2$I.%3$I t where t.%4$I is not null',
                   tenant_text, tg_table_schema, tg_table_name, tg_argv[1])
        using tg_argv[0];
    perform changecast.ring();
    return null;
end
$$;

/*
 * Function: changecast.watch(table, resource_type, tenant_column, id_column, exclude_columns)
 * As in V6; the excluded columns, given by name, are recorded by attribute number too,
 *   which is what the trigger and snapshots go by.
 */
create or replace function changecast.watch(
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
    if exists (select 1 from changecast.owned_columns(target) o where o.column_name = tenant_column) then
        raise exception 'changecast.watch: the tenant column "%" of % has a type owned by a role that is not a superuser', tenant_column, target
            using errcode = 'feature_not_supported',
                  hint = 'use a column of a built-in type (or a domain over one) as the tenant column: tenants are compared as text, and a cast to text of such a type is its owner''s code';
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

    insert into changecast.watched (table_name, resource_type, tenant_column, id_column,
                                    exclude_columns, exclude_attnums)
    values (target, watch.resource_type, watch.tenant_column, watch.id_column,
            array(select distinct unnest(watch.exclude_columns) order by 1),
            array(select a.attnum from pg_attribute a
                  where a.attrelid = target and a.attname = any(watch.exclude_columns)
                    and a.attnum > 0 and not a.attisdropped
                  order by 1))
    on conflict (table_name) do update
        set resource_type = excluded.resource_type,
            tenant_column = excluded.tenant_column,
            id_column = excluded.id_column,
            exclude_columns = excluded.exclude_columns,
            exclude_attnums = excluded.exclude_attnums,
            plain_natts = null,
            plain_filenode = null;
    perform changecast.check_definition_current(target);
    if not exists (select 1 from changecast.owned_columns(target)) then
        perform changecast.remember_plain(target);
    end if;
    perform changecast.attach(target, resource_type, tenant_column, id_column);
end
$$;

-- Existing entries: their excluded names, as the columns are named now. A name no column
-- has any more (renamed since watch()) cannot be matched: it is named in a warning. The
-- names stay excluded as names too (the trigger and snapshots exclude both), so a column
-- dropped and added again under an excluded name stays out as well.
update changecast.watched w
   set exclude_attnums = array(select a.attnum from pg_attribute a
                               where a.attrelid = w.table_name and a.attname = any(w.exclude_columns)
                                 and a.attnum > 0 and not a.attisdropped
                               order by 1)
 where w.exclude_columns <> '{}';
update changecast.watched w
   set plain_natts = c.relnatts, plain_filenode = c.relfilenode
  from pg_class c
 where c.oid = w.table_name
   and not exists (select 1 from changecast.owned_columns(w.table_name));
do $$
declare
    w record;
begin
    for w in select * from changecast.watched
              where cardinality(exclude_columns) <> cardinality(exclude_attnums) loop
        raise warning 'changecast: % has no column of some excluded names (%); a column renamed from one of them is not excluded under its new name',
                w.table_name, array_to_string(w.exclude_columns, ', ')
            using hint = format('run select changecast.watch(%L, %L, %L, %L, exclude_columns => ...) with the current names',
                                w.table_name::text, w.resource_type, w.tenant_column, w.id_column);
    end loop;
end
$$;

revoke all on function changecast.excluded_names(oid, int2[]) from public;
revoke all on function changecast.owned_columns(oid) from public;
revoke all on function changecast.check_definition_current(oid) from public;
revoke all on function changecast.committed_since_snapshot(xid) from public;
revoke all on function changecast.remember_plain(oid) from public;
revoke all on function changecast.row_to_jsonb(oid, anyelement) from public;
revoke all on function changecast.snapshot_rows_plain(oid) from public;
revoke all on function changecast.watch(regclass, text, text, text, text[]) from public;
