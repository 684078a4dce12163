-- The journal, partitioned by range of id, so that retention drops whole partitions
-- (TRUNCATE, then DROP) instead of deleting row by row: no per-row WAL, no vacuum debt,
-- no index bloat. The pruner (src/journal/pruner.rs) creates partitions ahead of the
-- writers and removes those whose every row is past the retention; a DEFAULT partition
-- catches ids beyond the partitions created (the service down for days), and the pruner
-- deletes its rows past the retention as before.
--
-- The conversion rewrites no row: the existing table becomes the first partition, for
-- ids below the next one the identity would have handed out. It is attached with a
-- CHECK constraint that implies its partition bound, so ATTACH trusts it instead of
-- scanning it again (adding the constraint reads the table once, under the lock this
-- migration holds anyway; nothing is written). Its indexes are renamed and then adopted
-- by the partitioned parent's indexes of the same definition (no index is built).
--
-- An identity column cannot be on a partitioned table before PostgreSQL 17, and a
-- partition may not have one of its own: ids come from a sequence that continues where
-- the identity stopped. The capture functions never name the id, so they are unchanged.

lock table changecast.change_log in access exclusive mode;

do $$
declare
    identity_sequence text := pg_get_serial_sequence('changecast.change_log', 'id');
    next_id bigint;
begin
    execute format('select case when is_called then last_value + 1 else last_value end from %s',
                   identity_sequence)
        into next_id;
    -- Rows inserted with an explicit id (OVERRIDING SYSTEM VALUE) may lie beyond it.
    next_id := greatest(next_id, coalesce((select max(id) + 1 from changecast.change_log), 1));

    alter table changecast.change_log rename to change_log_first;
    alter index changecast.change_log_pkey rename to change_log_first_pkey;
    alter index changecast.change_log_xid rename to change_log_first_xid;
    alter index changecast.change_log_tenant_id rename to change_log_first_tenant_id;
    alter table changecast.change_log_first alter column id drop identity;

    create sequence changecast.change_log_id_seq as bigint;
    perform setval('changecast.change_log_id_seq', next_id, false);

    execute format('alter table changecast.change_log_first
                        add constraint change_log_first_bound check (id < %s)', next_id);

    create table changecast.change_log (
        id              bigint not null default nextval('changecast.change_log_id_seq'),
        tenant_id       text not null,
        resource_type   text not null,
        event           text not null,
        resource_id     text not null,
        resource        jsonb not null,
        occurred_at     timestamptz not null default clock_timestamp(),
        xid             xid8 not null default pg_current_xact_id(),
        writer_snapshot pg_snapshot not null default pg_current_snapshot(),
        old             jsonb,
        constraint change_log_pkey primary key (id),
        constraint change_log_event_check
            check (event in ('created', 'updated', 'deleted', 'truncated', 'published'))
    ) partition by range (id);
    alter sequence changecast.change_log_id_seq owned by changecast.change_log.id;
    create index change_log_xid on changecast.change_log (xid);
    create index change_log_tenant_id on changecast.change_log (tenant_id, id);

    execute format('alter table changecast.change_log attach partition changecast.change_log_first
                        for values from (minvalue) to (%s)', next_id);
    -- Writers go here until the pruner has created partitions ahead of them.
    create table changecast.change_log_default partition of changecast.change_log default;
end
$$;

-- Application roles have no rights on the journal (the capture functions are security
-- definer); the service's role owns it.
revoke all on changecast.change_log, changecast.change_log_first, changecast.change_log_default,
              changecast.change_log_id_seq from public;

-- What the pruner sizes new partitions from: the sequence's position at each tick.
alter table changecast.journal_ticks add column next_id bigint;

/*
 * View: changecast.journal_partitions
 * The journal's partitions: `partition`, its bounds (`lower` inclusive, `upper`
 * exclusive; null for MINVALUE / MAXVALUE) and whether it is the DEFAULT partition.
 * Readable by the service's role only.
 */
create view changecast.journal_partitions as
select p.relid::regclass as partition,
       case when b.bound[1] ~ '^-?[0-9]+$' then b.bound[1]::bigint end as lower,
       case when b.bound[2] ~ '^-?[0-9]+$' then b.bound[2]::bigint end as upper,
       pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' as is_default
from pg_partition_tree('changecast.change_log') p
join pg_class c on c.oid = p.relid
cross join lateral (
    select regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        '^FOR VALUES FROM \(''?([^'')]+)''?\) TO \(''?([^'')]+)''?\)$') as bound
) b
where p.level = 1;
revoke all on changecast.journal_partitions from public;
