-- Privileges granted on the journal before it was partitioned (V15), on the journal
-- again. V15 renamed the old table to the partition `changecast.change_log_first` and
-- made a new partitioned `changecast.change_log`: what operators had granted on the old
-- table — SELECT to a role that inspects the journal, say — stayed with the partition,
-- which a query of `changecast.change_log` does not look at (PostgreSQL checks the
-- privileges of the table named, not of its partitions), and which the pruner drops
-- once its rows are past the retention.
--
-- Every privilege (table-wide or on a column, with its grant option) that a role other
-- than the owner holds on `change_log_first` and lacks on `change_log` is granted on
-- `change_log`. PUBLIC is left out: V15 revoked everything from PUBLIC on both tables,
-- and the journal holds every tenant's changes. Nothing is revoked; running this again
-- finds nothing missing. Where the pruner has dropped `change_log_first` already there
-- is nothing left to copy. The old identity sequence was dropped by V15 and the view
-- `journal_partitions` is new: there are no grants of theirs to carry over.
--
-- Runs as the owner of the journal (the service's role, no superuser needed): an owner
-- may grant every privilege on its table.

do $$
declare
    first regclass := to_regclass('changecast.change_log_first');
    journal regclass := 'changecast.change_log'::regclass;
    missing record;
begin
    if first is null then
        return;
    end if;

    for missing in
        select g.grantee::regrole::text as grantee, g.privilege_type, g.is_grantable
        from pg_class f
        cross join lateral aclexplode(f.relacl) g
        join pg_class j on j.oid = journal
        where f.oid = first
          and g.grantee not in (0, f.relowner, j.relowner)
          and not exists (
              select from aclexplode(coalesce(j.relacl, acldefault('r', j.relowner))) h
              where h.grantee = g.grantee
                and h.privilege_type = g.privilege_type
                and (h.is_grantable or not g.is_grantable))
        order by 1, 2
    loop
        execute format('grant %s on changecast.change_log to %s%s',
                       missing.privilege_type, missing.grantee,
                       case when missing.is_grantable then ' with grant option' else '' end);
    end loop;

    for missing in
        select a.attname, g.grantee::regrole::text as grantee, g.privilege_type, g.is_grantable
        from pg_attribute a
        cross join lateral aclexplode(a.attacl) g
        join pg_class f on f.oid = a.attrelid
        join pg_class j on j.oid = journal
        join pg_attribute b on b.attrelid = journal and b.attname = a.attname
                           and b.attnum > 0 and not b.attisdropped
        where a.attrelid = first
          and a.attnum > 0
          and not a.attisdropped
          and g.grantee not in (0, f.relowner, j.relowner)
          and not exists (
              select from aclexplode(b.attacl) h
              where h.grantee = g.grantee
                and h.privilege_type = g.privilege_type
                and (h.is_grantable or not g.is_grantable))
        order by 1, 2, 3
    loop
        execute format('grant %s (%I) on changecast.change_log to %s%s',
                       missing.privilege_type, missing.attname, missing.grantee,
                       case when missing.is_grantable then ' with grant option' else '' end);
    end loop;
end
$$;
