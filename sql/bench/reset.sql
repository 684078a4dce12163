-- Empties what benchmark runs write, so every run starts from the same journal: the
-- partitions a new installation has (the DEFAULT one, and the first, MINVALUE to 1,
-- unless a pruner removed it), none from earlier runs (journal_partitions.sql, or a
-- service's pruner).
-- Run only while no changecast service is attached to the database.
truncate public.tickets, bench.plain, bench.journalled, bench.watched, bench.bridge,
         changecast.change_log;
do $$
declare
    part text;
begin
    for part in
        select partition::text from changecast.journal_partitions
        where not is_default and lower is not null
    loop
        execute format('drop table %s', part);
    end loop;
end $$;
