-- changecast: journalling bulk UPDATEs from the rows' columns (changecast.update_journal_sql()).
--
-- What is written is V18's (and V14's): the same journal rows in the same order of ids.
-- How the statement is shaped, and why:
-- * Converting a row to jsonb is most of what a large UPDATE costs beyond the journal's
--   INSERT, and the old row's jsonb is needed whole only for rows whose tenant or id
--   changed (their `deleted` carries it). So the pairs carry the rows' columns, each
--   compared as it is: the new row becomes jsonb once (to_jsonb(), before pairing), the
--   old row only where it moved, and `old` is built from the columns that changed
--   (jsonb_build_object(), which converts each value as to_jsonb() of a row does).
-- * A column is compared with an operator that holds exactly when the jsonb values of
--   the two sides are equal, which is the rule of the row trigger:
--   - bool, int2, int4, int8, uuid, date, time, timetz, timestamp, timestamptz (and
--     domains directly over them) with their own equality: each value has one text in
--     JSON and equal values have equal text (timetz equality compares the zone too);
--   - text and varchar (and domains directly over them) with the "C" collation, which
--     compares bytes: the column's own collation may call different strings equal;
--   - every other type (numeric and float, where 1.0 and 1.00 are equal jsonb of
--     different text; interval, where '1 day' = '24 hours' in SQL but not in JSON;
--     char(n), whose equality ignores trailing blanks; json, jsonb, arrays, composites,
--     enums, domains over domains) as jsonb, a SQL null taken as JSON null as it is
--     in the row's jsonb, against the value in the new row's jsonb.
-- * Whether a row moved is decided by the text of its tenant and id, as the row trigger
--   decides it (`->>`), for pairs that changed: for a column compared by its own
--   equality or by bytes that is whether it changed; others compare that text.
-- * Pairs are unique by position (`distinct on`): the planner then orders the journal
--   rows by (pos, seq) with an incremental sort of each pair's one or two rows (V18).
-- * A select list holds at most 1664 entries, and the pairs carry about twice as many
--   as the table has columns: tables of more than changecast.bulk_columns() columns
--   keep V18's statement, which carries one jsonb per row.

/*
 * Function: changecast.bulk_columns()
 * Returns: the most columns (dropped ones aside) of a table whose bulk UPDATEs
 *   changecast.update_journal_sql() compares column by column; the pairs of a wider
 *   table's rows would not fit in a select list.
 */
create function changecast.bulk_columns() returns bigint
language sql immutable parallel safe as 'select 800::bigint';

/*
 * Function: changecast.columns_to_jsonb(table, excluded, prefix)
 * Returns: an expression that builds what to_jsonb() of a row of `table` minus the
 *   `excluded` keys is, from the row's columns named `prefix` || attnum: the same keys
 *   and, value by value, the same conversion. jsonb_build_object() takes at most 100
 *   arguments, so wider tables concatenate one object per 50 columns.
 */
create function changecast.columns_to_jsonb(target oid, excluded text[], prefix text) returns text
language sql stable set search_path = pg_catalog, pg_temp as $$
    select coalesce(string_agg(g.object, ' || ' order by g.chunk), '''{}''::jsonb')
      from (select c.chunk,
                   format('jsonb_build_object(%s)',
                          string_agg(format('%L, %s', c.attname, prefix || c.attnum), ', ' order by c.attnum))
                       as object
              from (select a.attnum, a.attname,
                           (row_number() over (order by a.attnum) - 1) / 50 as chunk
                      from pg_attribute a
                     where a.attrelid = target and a.attnum > 0 and not a.attisdropped
                       and a.attname <> all (excluded)) c
             group by c.chunk) g
$$;

/*
 * Function: changecast.update_journal_sql(table, excluded, tenant_column, id_column)
 * Returns: the INSERT that journals an UPDATE of `table` from the transition tables
 *   changecast_old and changecast_new of its statement trigger, with the parameters
 *   $1 tenant column, $2 id column, $3 resource type, $4 schema, $5 table name (for
 *   errors), $6 the excluded keys. It writes what V14's static statement writes:
 *   per pair of rows (the n-th old with the n-th new row) that differ, `updated` with
 *   the previous values of the keys that changed, or, when the tenant or id changed,
 *   `deleted` of the old row (where its tenant and id are not null) then `created`.
 *   tenant_column and id_column are the values of $1 and $2.
 *
 *   In the statement, the old row's columns are o_<attnum>, the new row's n_<attnum>,
 *   and whether a column changed changed_<attnum>. Each level orders its rows by
 *   position, which its input already is in: the planner keeps an order across a
 *   subquery only where the query above asks for it, and the last level needs it.
 */
create function changecast.update_journal_sql(target oid, excluded text[], tenant_column text, id_column text)
returns text
language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when count(*) > changecast.bulk_columns() then changecast.update_journal_sql(target, excluded)
    else format($sql$
        insert into changecast.change_log
               (tenant_id, resource_type, event, resource_id, resource, old, xid, writer_snapshot)
        select case when e.seq = 0 then p.prev ->> $1
                    else coalesce(p.cur ->> $1, changecast.refuse_null_key($4, $5, $1, 'tenant')) end,
               $3,
               case when e.seq = 0 then 'deleted' when p.moved then 'created' else 'updated' end,
               case when e.seq = 0 then p.prev ->> $2
                    else coalesce(p.cur ->> $2, changecast.refuse_null_key($4, $5, $2, 'id')) end,
               case when e.seq = 0 then p.prev else p.cur end,
               case when e.seq = 1 and not p.moved then p.old_values end,
               (select pg_current_xact_id()),
               (select pg_current_snapshot())
          from (select distinct on (m.pos) m.pos, m.cur, m.moved,
                       case when m.moved then %s end as prev,
                       case when not m.moved then %s end as old_values
                  from (select c.*, %s or %s as moved
                          from (select b.*, a.cur, %s
                                  from (select row_number() over (), o.* from changecast_old o offset 0)
                                       b (pos, %s)
                                  join (select row_number() over (), to_jsonb(n.*) - $6, n.* from changecast_new n offset 0)
                                       a (new_pos, cur, %s)
                                    on a.new_pos = b.pos
                                 order by b.pos offset 0) c
                         where %s
                         order by c.pos offset 0) m
                 order by m.pos) p,
               (values (0), (1)) e (seq)
         where e.seq = 1
            or (p.moved and p.prev ->> $1 is not null and p.prev ->> $2 is not null)
         order by p.pos, e.seq$sql$,
        changecast.columns_to_jsonb(target, excluded, 'm.o_'),
        -- old: the changed columns' previous values (jsonb || '{}' returns its other side)
        string_agg(format('case when m.changed_%s then jsonb_build_object(%L, m.o_%s) else ''{}''::jsonb end',
                          c.attnum, c.attname, c.attnum),
                   ' || ' order by c.attnum) filter (where c.compared),
        -- moved: the tenant's or the id's text as `->>` reads it from the row's jsonb
        -- changed, which for JSON strings, booleans and integers is their jsonb changing
        coalesce(max(c.key_changed) filter (where c.attname = tenant_column and c.compared), 'false'),
        coalesce(max(c.key_changed) filter (where c.attname = id_column and c.compared), 'false'),
        string_agg(format('%s as changed_%s', c.changed, c.attnum), ', ' order by c.attnum) filter (where c.compared),
        string_agg(format('o_%s', c.attnum), ', ' order by c.attnum),
        string_agg(format('n_%s', c.attnum), ', ' order by c.attnum),
        string_agg(format('c.changed_%s', c.attnum), ' or ' order by c.attnum) filter (where c.compared))
    end
      from (select a.attnum, a.attname, a.attname <> all (excluded) as compared,
                   case k.kind
                        when 'equal' then format('b.o_%1$s is distinct from a.n_%1$s', a.attnum)
                        when 'bytes' then format('b.o_%1$s collate "C" is distinct from a.n_%1$s collate "C"', a.attnum)
                        else format('coalesce(to_jsonb(b.o_%s), ''null'') is distinct from a.cur -> %L',
                                    a.attnum, a.attname) end as changed,
                   case when k.kind in ('equal', 'bytes') then format('c.changed_%s', a.attnum)
                        else format('(to_jsonb(c.o_%s) #>> ''{}'') is distinct from c.cur ->> %L', a.attnum, a.attname)
                   end as key_changed
              from pg_attribute a
              join pg_type t on t.oid = a.atttypid
              cross join lateral (select case when t.typtype = 'd' then t.typbasetype else t.oid end as base) b
              cross join lateral (
                  select case when b.base in ('bool'::regtype, 'int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                                              'uuid'::regtype, 'date'::regtype, 'time'::regtype, 'timetz'::regtype,
                                              'timestamp'::regtype, 'timestamptz'::regtype) then 'equal'
                              when b.base in ('text'::regtype, 'varchar'::regtype) then 'bytes'
                              else 'jsonb' end as kind) k
             where a.attrelid = target and a.attnum > 0 and not a.attisdropped) c
$$;

revoke all on function changecast.bulk_columns() from public;
revoke all on function changecast.columns_to_jsonb(oid, text[], text) from public;
revoke all on function changecast.update_journal_sql(oid, text[], text, text) from public;
