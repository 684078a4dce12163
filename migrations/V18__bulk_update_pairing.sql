-- changecast: journalling bulk UPDATEs (changecast.update_journal_sql()).
--
-- What is written is V16's (and V14's): the same journal rows in the same order of ids.
-- How the statement is shaped, and why:
-- * Large statements pair their rows with a merge join on position, whose output is in
--   position order. `distinct on (pos)` (which removes nothing: positions are row
--   numbers, unique on each side) tells the planner that the pairs are unique by
--   position, so it can order the journal rows by (pos, seq) with an incremental sort
--   of the one or two rows of each pair. Left to guess how many rows share a position,
--   it sorts all of them, wide as they are (632 MB on disk for a million rows). The
--   ORDER BY is what fixes the order, whichever plan the planner picks.
-- * A column whose values to_jsonb() makes JSON strings, booleans or integers (text,
--   varchar, char, uuid, date, time, timetz, timestamp, timestamptz, interval, bool,
--   int2, int4, int8, or a domain directly over one of them: to_jsonb() looks through
--   domains, and looks for a cast to json only for types that are not built in) is
--   compared by the text of its values (`->>`, SQL null for a JSON null, hence
--   `is not distinct from`). For such values that is exactly jsonb equality (one JSON
--   type per column; equal strings, booleans and integers have equal text) and costs
--   less than `->`, which builds a jsonb value of each side. Every other column
--   (numeric and float, where 1.0 and 1.00 are equal jsonb of different text; json and
--   jsonb; arrays, composites, enums and other types) is compared as jsonb.
-- * jsonb - text[] skips null elements: the array of unchanged keys needs no
--   array_remove().

/*
 * Function: changecast.update_journal_sql(table, excluded)
 * Returns: the INSERT that journals an UPDATE of `table` from the transition tables
 *   changecast_old and changecast_new of its statement trigger, with the parameters
 *   $1 tenant column, $2 id column, $3 resource type, $4 schema, $5 table name (for
 *   errors), $6 the excluded keys. It writes what V14's static statement writes:
 *   per pair of rows (the n-th old with the n-th new row) that differ, `updated` with
 *   the previous values of the keys that changed, or, when the tenant or id changed,
 *   `deleted` of the old row (where its tenant and id are not null) then `created`.
 */
create or replace function changecast.update_journal_sql(target oid, excluded text[]) returns text
language sql stable set search_path = pg_catalog, pg_temp as $$
    select format($sql$
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
          from (select distinct on (d.pos) d.pos, d.prev, d.cur,
                       d.prev - array[%s]::text[] as old_values,
                       (d.prev ->> $1, d.prev ->> $2) is distinct from (d.cur ->> $1, d.cur ->> $2) as moved
                  from (select before.pos, before.r as prev, after.r as cur
                          from (select row_number() over () as pos, to_jsonb(o.*) - $6 as r
                                  from changecast_old o offset 0) before
                          join (select row_number() over () as pos, to_jsonb(n.*) - $6 as r
                                  from changecast_new n offset 0) after using (pos)
                         where before.r <> after.r) d
                 order by d.pos) p,
               (values (0), (1)) e (seq)
         where e.seq = 1
            or (p.moved and p.prev ->> $1 is not null and p.prev ->> $2 is not null)
         order by p.pos, e.seq$sql$,
        coalesce(string_agg(
                     case when b.base in ('bool'::regtype, 'int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                                          'text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'uuid'::regtype,
                                          'date'::regtype, 'time'::regtype, 'timetz'::regtype,
                                          'timestamp'::regtype, 'timestamptz'::regtype, 'interval'::regtype)
                          then format('case when d.prev ->> %1$L is not distinct from d.cur ->> %1$L then %1$L end',
                                      a.attname)
                          else format('case when d.prev -> %1$L = d.cur -> %1$L then %1$L end', a.attname) end,
                     ', ' order by a.attnum),
                 ''))
      from pg_attribute a
      join pg_type t on t.oid = a.atttypid
      cross join lateral (select case when t.typtype = 'd' then t.typbasetype else t.oid end as base) b
     where a.attrelid = target and a.attnum > 0 and not a.attisdropped
       and a.attname <> all (excluded)
$$;
