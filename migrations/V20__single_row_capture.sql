-- changecast: a shorter path for statements of one row captured by statement.
--
-- What changecast.capture_set() writes is unchanged (see V14, V16): the same journal
-- rows, in the same order, with the same checks and errors. Only the statements of one
-- row (the common single-row INSERT, UPDATE or DELETE) take a shorter path. A PL/pgSQL
-- trigger's cost at that size is almost all fixed cost per SQL statement it runs:
-- starting the executor for each plan node (a scan of a transition table, an index
-- scan, a subplan, an aggregate) and compiling each expression costs more than
-- evaluating them for one row. The row trigger gets its row for free (OLD, NEW); the
-- statement trigger must read it from a transition table, so the rest is kept lean:
-- * The registration's pg_class row is read by a subquery that returns its two columns.
--   Joined directly, the index scan returned the whole pg_class row, whose 33 columns
--   the executor sets up a tuple descriptor for at every call. The first three trigger
--   arguments are compared with the registration's three columns (never null) as one
--   array rather than three text comparisons, and the isolation level is read outside
--   the query; the results are the same.
-- * One query reads the first row (or the first old and new rows) as JSON and whether
--   a second row exists. SELECT INTO without STRICT fetches one row, so the executor
--   stops there: no LIMIT node is needed. Counting up to changecast.bulk_rows() is left
--   to UPDATEs of two rows or more, which need the count to choose their plan.
-- * The single row is written with INSERT ... VALUES as the row trigger writes it, its
--   writer's transaction id and snapshot being the journal's column defaults, evaluated
--   by that INSERT (what the statement's uncorrelated subqueries give for more rows). A
--   null tenant or id is refused by changecast.refuse_null_key() before the INSERT,
--   tenant first, with the same error; the INSERT then sets up no call of it.
-- * An UPDATE that changes nothing is recognised by comparing the two JSON objects:
--   they have the same keys (one table, the same excluded columns), so they are equal
--   exactly when no key's value differs, the condition under which no journal row is
--   written. A moved row (tenant or id changed) needs no previous values. Otherwise the
--   previous values are the old object minus the keys whose value stayed, computed
--   inside the INSERT that writes them: one query fewer, and jsonb_object_keys() in a
--   target list plus an array subquery cost less to start than jsonb_each() under an
--   aggregate. An object minus some of its keys is the object built from the other
--   pairs, so the value written is the same.
-- Statements of two rows or more are journalled as in V16, after the one query above
-- (a small part of their cost), except that a bulk UPDATE hands its tenant and id
-- columns to changecast.update_journal_sql(), which compares the rows column by column
-- and must know them (V19); tables with a column of a type a non-superuser owns never
-- reach that query.

/*
 * Function: changecast.capture_set()  (AFTER statement trigger with transition tables)
 * As in V16, with the single-row path and the lookups of the header.
 */
create or replace function changecast.capture_set() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    excluded  text[];
    plain     boolean;
    registered boolean;
    old_snapshot boolean;
    typed     boolean := false;
    written   bigint;
    rows      bigint;
    more      boolean;
    changed   jsonb;
    previous  jsonb;
    old_values jsonb;
    kind      text;
    tenant    text;
    row_id    text;
    row_type  text;
    jit_setting text;
begin
    old_snapshot := current_setting('transaction_isolation') <> 'read committed';
    select case when w.exclude_columns = '{}' then '{}'
                else w.exclude_columns || changecast.excluded_names(w.table_name, w.exclude_attnums) end,
           coalesce(w.plain_natts = c.relnatts and w.plain_filenode = c.relfilenode, false),
           true
      into excluded, plain, registered
      from changecast.watched w,
           (select c.relnatts, c.relfilenode from pg_class c where c.oid = tg_relid offset 0) c
     where w.table_name = tg_relid
       and array[w.resource_type, w.tenant_column, w.id_column] = tg_argv[0:2];
    if not found then
        select case when w.exclude_columns = '{}' then '{}'
                    else w.exclude_columns || changecast.excluded_names(w.table_name, w.exclude_attnums) end,
               false,
               false
          into excluded, plain, registered
          from changecast.watched w, pg_class c
         where w.table_name in (select relid from pg_partition_ancestors(tg_relid))
           and c.oid = tg_relid
           and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
        if not found then
            -- A statement that changed no row is refused nothing (no row trigger fires).
            if tg_op = 'DELETE' then
                perform from changecast_old limit 1;
            else
                perform from changecast_new limit 1;
            end if;
            if not found then
                return null;
            end if;
            raise exception 'changecast: %.% is not watched as "%" (tenant column "%", id column "%")',
                    tg_table_schema, tg_table_name, tg_argv[0], tg_argv[1], tg_argv[2]
                using errcode = 'insufficient_privilege',
                      hint = 'attach the trigger with changecast.watch()';
        end if;
    end if;
    if old_snapshot then
        if tg_op = 'DELETE' then
            perform from changecast_old limit 1;
        else
            perform from changecast_new limit 1;
        end if;
        if not found then
            return null;
        end if;
        perform changecast.check_definition_current(tg_relid);
    end if;
    if not plain then
        typed := exists (select 1 from changecast.owned_columns(tg_relid));
        if not typed and registered and not old_snapshot then
            perform changecast.remember_plain(tg_relid);
        end if;
    end if;

    if not typed then
        if tg_op = 'UPDATE' then
            select to_jsonb(o.*) - excluded, to_jsonb(n.*) - excluded,
                   exists (select from changecast_old l offset 1)
              into previous, changed, more
              from changecast_old o, changecast_new n;
        elsif tg_op = 'INSERT' then
            select to_jsonb(n.*) - excluded, exists (select from changecast_new l offset 1)
              into changed, more
              from changecast_new n;
        else
            select to_jsonb(o.*) - excluded, exists (select from changecast_old l offset 1)
              into changed, more
              from changecast_old o;
        end if;
        if not found then
            return null;
        end if;
        if not more then
            if tg_op = 'INSERT' then
                kind := 'created';
            elsif tg_op = 'DELETE' then
                kind := 'deleted';
            elsif previous = changed then
                return null;
            elsif (previous ->> tg_argv[1], previous ->> tg_argv[2])
                  is distinct from (changed ->> tg_argv[1], changed ->> tg_argv[2]) then
                kind := 'created';
                if previous ->> tg_argv[1] is not null and previous ->> tg_argv[2] is not null then
                    insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                    values (previous ->> tg_argv[1], tg_argv[0], 'deleted', previous ->> tg_argv[2], previous);
                end if;
            else
                kind := 'updated';
            end if;
            tenant := changed ->> tg_argv[1];
            if tenant is null then
                perform changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[1], 'tenant');
            end if;
            row_id := changed ->> tg_argv[2];
            if row_id is null then
                perform changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[2], 'id');
            end if;
            if kind = 'updated' then
                insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource, old)
                values (tenant, tg_argv[0], kind, row_id, changed,
                        previous - array(select s.k from (select jsonb_object_keys(previous) as k) s
                                          where previous -> s.k is not distinct from changed -> s.k));
            else
                insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                values (tenant, tg_argv[0], kind, row_id, changed);
            end if;
            if not pg_try_advisory_xact_lock_shared(1667458146, 1) then
                perform pg_notify('changecast', '');
            end if;
            return null;
        end if;
    end if;

    if typed then
        -- changecast.row_to_jsonb() needs a row of the table's own type, while the rows
        -- of transition tables are anonymous records: SQL made for the table casts them.
        -- Such rows cost an EXECUTE each in row_to_jsonb() anyway, so the UPDATE pairs
        -- are journalled one by one, as the row trigger journals them.
        row_type := format('%I.%I', tg_table_schema, tg_table_name);
        if tg_op <> 'UPDATE' then
            execute format(
                'insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                 select coalesce(r.row ->> $3, changecast.refuse_null_key($6, $7, $3, ''tenant'')),
                        $2, $8,
                        coalesce(r.row ->> $4, changecast.refuse_null_key($6, $7, $4, ''id'')),
                        r.row
                   from (select changecast.row_to_jsonb($1, (t.*)::%s) - $5 as row from %I t offset 0) r',
                row_type, case tg_op when 'INSERT' then 'changecast_new' else 'changecast_old' end)
                using tg_relid, tg_argv[0], tg_argv[1], tg_argv[2], excluded, tg_table_schema, tg_table_name,
                      case tg_op when 'INSERT' then 'created' else 'deleted' end;
            get diagnostics written = row_count;
        else
            written := 0;
            for previous, changed in execute format(
                    'select o.row, n.row
                       from (select row_number() over () as k, changecast.row_to_jsonb($1, (o.*)::%1$s) - $2 as row
                               from changecast_old o) o
                       join (select row_number() over () as k, changecast.row_to_jsonb($1, (n.*)::%1$s) - $2 as row
                               from changecast_new n) n using (k)
                      order by k',
                    row_type)
                    using tg_relid, excluded loop
                select jsonb_object_agg(p.key, p.value) into old_values
                  from jsonb_each(previous) p
                 where changed -> p.key is distinct from p.value;
                continue when old_values is null;
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
                insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource, old)
                values (coalesce(changed ->> tg_argv[1],
                                 changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[1], 'tenant')),
                        tg_argv[0], kind,
                        coalesce(changed ->> tg_argv[2],
                                 changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[2], 'id')),
                        changed, old_values);
                written := written + 1;
            end loop;
        end if;
    elsif tg_op = 'INSERT' then
        insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource, xid, writer_snapshot)
        select coalesce(r.row ->> tg_argv[1],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[1], 'tenant')),
               tg_argv[0], 'created',
               coalesce(r.row ->> tg_argv[2],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[2], 'id')),
               r.row,
               (select pg_current_xact_id()),
               (select pg_current_snapshot())
          from (select to_jsonb(n.*) - excluded as row
                  from changecast_new n offset 0) r;
        get diagnostics written = row_count;
    elsif tg_op = 'DELETE' then
        insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource, xid, writer_snapshot)
        select coalesce(r.row ->> tg_argv[1],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[1], 'tenant')),
               tg_argv[0], 'deleted',
               coalesce(r.row ->> tg_argv[2],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[2], 'id')),
               r.row,
               (select pg_current_xact_id()),
               (select pg_current_snapshot())
          from (select to_jsonb(o.*) - excluded as row
                  from changecast_old o offset 0) r;
        get diagnostics written = row_count;
    else
        -- (Two rows or more: the single row was journalled above. The count stops at
        -- changecast.bulk_rows().)
        select count(*) into rows from (select from changecast_old l limit changecast.bulk_rows()) c;
        if rows >= changecast.bulk_rows() then
            -- Without JIT: to the planner, a join on row numbers looks like one on any
            -- column of unknown distinct values, so it estimates the pairs of a
            -- million-row UPDATE in the hundreds of millions, and JIT would spend
            -- seconds compiling for them.
            jit_setting := current_setting('jit');
            perform set_config('jit', 'off', true);
            execute changecast.update_journal_sql(tg_relid, excluded, tg_argv[1], tg_argv[2])
                using tg_argv[1], tg_argv[2], tg_argv[0], tg_table_schema, tg_table_name, excluded;
            get diagnostics written = row_count;
            perform set_config('jit', jit_setting, true);
        else
            -- (Pairs: the old and new image of the n-th updated row. `old_values` null:
            -- nothing changed. Per pair, `seq` 0 is the `deleted` of a moved row, 1 its
            -- `created` or the `updated`.)
            insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource, old)
            select case when e.seq = 0 then p.prev ->> tg_argv[1]
                        else coalesce(p.cur ->> tg_argv[1],
                                      changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[1], 'tenant')) end,
                   tg_argv[0],
                   case when e.seq = 0 then 'deleted' when p.moved then 'created' else 'updated' end,
                   case when e.seq = 0 then p.prev ->> tg_argv[2]
                        else coalesce(p.cur ->> tg_argv[2],
                                      changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[2], 'id')) end,
                   case when e.seq = 0 then p.prev else p.cur end,
                   case when e.seq = 1 and not p.moved then p.old_values end
              from (select d.n, d.prev, d.cur, d.old_values,
                           (d.prev ->> tg_argv[1], d.prev ->> tg_argv[2])
                           is distinct from (d.cur ->> tg_argv[1], d.cur ->> tg_argv[2]) as moved
                      from (select m.n, m.prev, m.cur,
                                   case when m.prev <> m.cur then
                                       (select jsonb_object_agg(k.key, k.value)
                                          from jsonb_each(m.prev) k
                                         where m.cur -> k.key is distinct from k.value) end as old_values
                              from (select s.n,
                                           (array_agg(s.r) filter (where s.side = 0))[1] as prev,
                                           (array_agg(s.r) filter (where s.side = 1))[1] as cur
                                      from (select row_number() over () as n, 0 as side,
                                                   to_jsonb(o.*) - excluded as r
                                              from changecast_old o
                                            union all
                                            select row_number() over (), 1,
                                                   to_jsonb(n.*) - excluded
                                              from changecast_new n) s
                                     group by s.n) m
                            offset 0) d
                     where d.old_values is not null
                    offset 0) p,
                   (values (0), (1)) e (seq)
             where e.seq = 1
                or (p.moved and p.prev ->> tg_argv[1] is not null and p.prev ->> tg_argv[2] is not null)
             order by p.n, e.seq;
            get diagnostics written = row_count;
        end if;
    end if;
    if written > 0 and not pg_try_advisory_xact_lock_shared(1667458146, 1) then
        perform pg_notify('changecast', '');
    end if;
    return null;
end
$$;
