-- Gives the emptied journal the shape it has in the steady state, so that live figures
-- include what reading a partitioned journal costs: %PARTITIONS% partitions in all (the
-- bench substitutes the number). Besides those reset.sql leaves (the DEFAULT one, and the
-- first, MINVALUE to 1, unless a pruner removed it): partitions of older rows (10,000 ids
-- each, 1,000 rows of a tenant no subscriber has), the partition the writers fill (from
-- the sequence's next id, 10,000,000 ids) and one more ahead of it, as the pruner keeps
-- them. Only the partitions of older rows are analyzed: the pruner's new partitions have
-- no statistics until autovacuum analyzes them once they hold rows.
-- Run only while no changecast service is attached to the database, after reset.sql.
do $$
declare
    wanted int := %PARTITIONS%;
    old_partitions int := wanted - 2 - (select count(*) from changecast.journal_partitions);
    span bigint := 10000;
    lower_id bigint;
    part text;
begin
    if old_partitions < 0 then
        raise exception 'a journal in the steady state has at least 4 partitions, not %', wanted;
    end if;
    lower_id := (select case when is_called then last_value + 1 else last_value end
                 from changecast.change_log_id_seq);
    for n in 0 .. old_partitions + 1 loop
        part := format('changecast.bench_journal_p%s', n);
        execute format('create table %s (like changecast.change_log including all)', part);
        execute format('alter table changecast.change_log attach partition %s for values from (%s) to (%s)',
                       part, lower_id,
                       lower_id + case when n < old_partitions then span else 10000000 end);
        if n < old_partitions then
            perform setval('changecast.change_log_id_seq', lower_id, false);
            insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
            select 'bench-older-rows', 'ticket', 'created', g::text, jsonb_build_object('id', g)
            from generate_series(1, 1000) g;
            execute format('analyze %s', part);
            lower_id := lower_id + span;
        elsif n = old_partitions then
            -- The writers' partition: the sequence hands out its ids from here on.
            perform setval('changecast.change_log_id_seq', lower_id, false);
            lower_id := lower_id + 10000000;
        end if;
    end loop;
    if (select count(*) from changecast.journal_partitions) <> wanted then
        raise exception 'the journal has % partitions, not %',
            (select count(*) from changecast.journal_partitions), wanted;
    end if;
end $$;
