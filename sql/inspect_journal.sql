-- Inspect the journal: volume, age, the newest changes, and retention state.
-- Run with: psql "$DATABASE_URL" -f sql/inspect_journal.sql

select resource_type, tenant_id, count(*) as changes,
       min(occurred_at) as oldest, max(occurred_at) as newest
from changecast.change_log
group by 1, 2
order by changes desc
limit 20;

select id, tenant_id, resource_type, event, resource_id, occurred_at, xid, writer_snapshot
from changecast.change_log
order by id desc
limit 20;

-- pruned_below: rows of transactions below it may be gone; cursors not seeing all of them get `cursor_expired`.
-- The journal's size is its partitions' (the partitioned parent itself stores nothing).
select journal_id, pruned_below,
       (select pg_size_pretty(sum(pg_total_relation_size(relid)))
        from pg_partition_tree('changecast.change_log')) as journal_size
from changecast.journal_meta;

-- Partitions, oldest first: the pruner creates them ahead of the writers and removes one
-- whole once every row in it is past the retention; the DEFAULT one takes ids beyond them.
select p.partition, p.lower, p.upper, p.is_default,
       pg_size_pretty(pg_total_relation_size(p.partition)) as size,
       (select reltuples::bigint from pg_class where oid = p.partition) as estimated_rows
from changecast.journal_partitions p
order by p.is_default, p.lower nulls first;

-- Who is connected (the service names its connections changecast:*):
select application_name, state, backend_start from pg_stat_activity where application_name like 'changecast:%';

-- Pruning ticks: rows of transactions below `horizon` committed before `taken_at`.
select taken_at, horizon from changecast.journal_ticks order by taken_at desc limit 5;
