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
select journal_id, pruned_below, pg_size_pretty(pg_total_relation_size('changecast.change_log')) as journal_size
from changecast.journal_meta;

-- Who is connected (the service names its connections changecast:*):
select application_name, state, backend_start from pg_stat_activity where application_name like 'changecast:%';

-- Pruning ticks: rows of transactions below `horizon` committed before `taken_at`.
select taken_at, horizon from changecast.journal_ticks order by taken_at desc limit 5;
