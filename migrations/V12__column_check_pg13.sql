-- changecast: PostgreSQL 13 support for the column check of V9.
--
-- `check_definition_current` asks whether a column exists beyond the ones a transaction's
-- snapshot shows with `has_column_privilege(table, number, ...)`, which reads the
-- current catalog and answers NULL for a column that does not exist. PostgreSQL 13
-- checks the privilege on the whole table first, and answers true to a role that has
-- it whatever the number: every table looked changed, and watch() and the capture
-- trigger refused their transactions. From PostgreSQL 14 on the answer is the same as
-- before, and nothing changes there. `create or replace` keeps the function's grants.

do $migration$
begin
    if current_setting('server_version_num')::int >= 140000 then
        return;
    end if;
    execute $ddl$
/*
 * Function: changecast.column_exists(table, number)
 * Returns: whether `table` has a column `number` (not dropped) in the current catalog,
 *   whatever this transaction's snapshot shows.
 * Asks on behalf of PUBLIC, with a privilege PUBLIC lacks on the whole table; where
 *   PUBLIC holds all four column privileges on it, no column is found (the check is then
 *   as before V9). PostgreSQL 13 only.
 */
create function changecast.column_exists(target oid, number int2) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $fn$
declare
    privilege text;
begin
    select p into privilege
      from unnest(array['REFERENCES', 'UPDATE', 'INSERT', 'SELECT']) p
     where not has_table_privilege('public', target, p)
     limit 1;
    return privilege is not null
           and has_column_privilege('public', target, number, privilege) is not null;
end
$fn$
    $ddl$;
    revoke all on function changecast.column_exists(oid, int2) from public;
    execute $ddl$
create or replace function changecast.check_definition_current(target oid) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $fn$
begin
    if (select changecast.committed_since_snapshot(c.xmax)
               or changecast.column_exists(target, (c.relnatts + 1)::int2)
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
$fn$;
    $ddl$;
end
$migration$;
