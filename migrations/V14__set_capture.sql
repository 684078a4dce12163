-- changecast: capture by statement (API.md §2).
--
-- A watched table gets three AFTER ... FOR EACH STATEMENT triggers with transition tables
-- (`changecast_capture_insert`, `_update`, `_delete`, function changecast.capture_set())
-- instead of the AFTER ROW trigger `changecast_capture`: each statement looks up the
-- registration once, writes its journal rows with one INSERT ... SELECT and rings the
-- doorbell once. What it writes is what changecast.capture() writes for the statement's
-- rows, in the same order:
-- * the same registration check (exact table and trigger arguments, else
--   insufficient_privilege), the same refusal of an older snapshot, the same excluded
--   columns (by current names) and the same treatment of columns of types a
--   non-superuser owns (changecast.row_to_jsonb, never to_jsonb on them; the
--   plain_natts/plain_filenode memo);
-- * INSERT -> `created`, DELETE -> `deleted` (the old row), in the statement's order
--   of rows (the order of the transition tables);
-- * UPDATE: the n-th row of the old transition table is the n-th row of the new one
--   (PostgreSQL appends both images of a row together), so rows are paired by position,
--   which keeps a statement that swaps ids (or repeats them) paired as the row trigger
--   saw it. An update that changes nothing (after exclusion) writes nothing; a changed
--   tenant or id writes `deleted` of the old row (if its tenant and id are not null)
--   before `created` of the new one; else `updated` with the previous values of the
--   keys that changed;
-- * a null tenant or id fails the statement with the row trigger's not_null_violation.
-- One difference in order remains: an INSERT ... ON CONFLICT DO UPDATE fires the UPDATE
-- statement trigger before the INSERT one, so its `updated` rows precede its `created`
-- rows in the journal, where the row trigger interleaved them in the statement's order
-- (each row still has exactly one event: such a statement cannot touch a row twice).
--
-- Where statement triggers would lose changes, the row trigger stays:
-- * partitioned tables: a statement addressed to a partition (also one attached or
--   created after watch()) fires no trigger of the parent, and statement triggers are
--   not cloned to partitions, while row triggers are;
-- * partitions and inheritance children watched by themselves: a statement addressed
--   to their parent fires none of their statement triggers;
-- * inheritance parents: their transition tables would hold their children's rows too.
-- changecast.attach() decides by the table's kind when watch() runs. A table that
-- becomes an inheritance parent afterwards has its children's rows captured as its own
-- for statements addressed to it (more events, none lost); one that becomes a partition
-- or an inheritance child afterwards is not captured for statements addressed to its
-- parent (changecast.role_findings() names it, and `serve` logs it at start): watch()
-- again gives either the row trigger.
-- Logical replication's apply fires row triggers only: a table with the statement
-- triggers keeps the row trigger too, firing in replica mode alone, while the statement
-- triggers fire in origin and local mode, so every write is captured once whatever the
-- session_replication_role.
--
-- Tables watched before this migration are converted where this role may create their
-- triggers and change when they fire (a superuser runs migrations, or this role owns the
-- table or is a member of its owner's role): that is for a table's owner, which the lent
-- TRIGGER of V13 does not cover. Others keep their row trigger firing ALWAYS, which keeps
-- working: watch() run again by the table's owner converts them.

/*
 * Function: changecast.refuse_null_key(schema, table, column, what)
 * Raises the row trigger's not_null_violation for a row of schema.table whose `what`
 * ('tenant' or 'id') column is null. Returns nothing else (it is called through
 * coalesce() only for such a row). Volatile: never folded into a plan.
 */
create function changecast.refuse_null_key(schema_name text, table_name text, column_name text, what text)
returns text
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
begin
    if what = 'tenant' then
        raise exception 'changecast: row of %.% has no tenant (column "%" is null)',
                schema_name, table_name, column_name
            using errcode = 'not_null_violation',
                  hint = 'every row of a watched table must name its tenant';
    end if;
    raise exception 'changecast: row of %.% has no id (column "%" is null)',
            schema_name, table_name, column_name
        using errcode = 'not_null_violation';
end
$$;

/*
 * Function: changecast.capture_set()  (AFTER statement trigger with transition tables)
 * Parameters (trigger arguments): resource_type, tenant_column, id_column
 * Transition tables: changecast_new (INSERT, UPDATE), changecast_old (UPDATE, DELETE).
 * Returns: null.
 * Algorithm: see the header (a transition table's row is `alias.*`: a column may have the
 *   alias's name); the checks before writing are changecast.capture()'s, once
 *   per statement. (`offset 0` keeps a subquery's JSON from being computed once per
 *   reference.) All SQL is static, so its plans are kept per trigger (and planned
 *   with the row counts of a trigger's first statements): the UPDATE pairing is
 *   therefore a grouping by position, which no row-count estimate can turn into a
 *   nested loop over the transition tables.
 */
create function changecast.capture_set() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    excluded  text[];
    plain     boolean;
    registered boolean;
    old_snapshot boolean;
    typed     boolean := false;
    written   bigint;
    rows      bigint;
    changed   jsonb;
    previous  jsonb;
    old_values jsonb;
    kind      text;
    row_type  text;
begin
    select case when w.exclude_columns = '{}' then '{}'
                else w.exclude_columns || changecast.excluded_names(w.table_name, w.exclude_attnums) end,
           coalesce(w.plain_natts = c.relnatts and w.plain_filenode = c.relfilenode, false),
           true,
           current_setting('transaction_isolation') <> 'read committed'
      into excluded, plain, registered, old_snapshot
      from changecast.watched w, pg_class c
     where w.table_name = tg_relid and c.oid = tg_relid
       and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
    if not found then
        select case when w.exclude_columns = '{}' then '{}'
                    else w.exclude_columns || changecast.excluded_names(w.table_name, w.exclude_attnums) end,
               false,
               false,
               current_setting('transaction_isolation') <> 'read committed'
          into excluded, plain, registered, old_snapshot
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
        insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
        select coalesce(r.row ->> tg_argv[1],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[1], 'tenant')),
               tg_argv[0], 'created',
               coalesce(r.row ->> tg_argv[2],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[2], 'id')),
               r.row
          from (select to_jsonb(n.*) - excluded as row
                  from changecast_new n offset 0) r;
        get diagnostics written = row_count;
    elsif tg_op = 'DELETE' then
        insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
        select coalesce(r.row ->> tg_argv[1],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[1], 'tenant')),
               tg_argv[0], 'deleted',
               coalesce(r.row ->> tg_argv[2],
                        changecast.refuse_null_key(tg_table_schema, tg_table_name, tg_argv[2], 'id')),
               r.row
          from (select to_jsonb(o.*) - excluded as row
                  from changecast_old o offset 0) r;
        get diagnostics written = row_count;
    else
        -- One row (the common case) is written as the row trigger writes it, after one
        -- query for the first pair, its changed values and whether there are more (the
        -- count stops at 2): cheaper than pairing a statement's rows.
        select f.previous, f.changed, f.rows,
               (select jsonb_object_agg(p.key, p.value)
                  from jsonb_each(f.previous) p
                 where f.changed -> p.key is distinct from p.value)
          into previous, changed, rows, old_values
          from (select to_jsonb(o.*) - excluded as previous, to_jsonb(n.*) - excluded as changed,
                       (select count(*) from (select from changecast_old l limit 2) c) as rows
                  from changecast_old o, changecast_new n
                 limit 1) f;
        if rows is null then
            return null;
        elsif rows = 1 then
            if old_values is null then
                return null;
            end if;
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
            if not pg_try_advisory_xact_lock_shared(1667458146, 1) then
                perform pg_notify('changecast', '');
            end if;
            return null;
        end if;
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
    if written > 0 and not pg_try_advisory_xact_lock_shared(1667458146, 1) then
        perform pg_notify('changecast', '');
    end if;
    return null;
end
$$;

/*
 * Function: changecast.captures_by_statement(table)
 * Returns: whether `table` is captured by statement triggers: a plain table that is no
 *   partition and takes part in no inheritance (see the header). Else the row trigger.
 */
create function changecast.captures_by_statement(target oid) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
    select c.relkind = 'r' and not c.relispartition
           and not exists (select 1 from pg_catalog.pg_inherits i
                           where i.inhrelid = target or i.inhparent = target)
    from pg_catalog.pg_class c where c.oid = target
$$;

/*
 * Function: changecast.is_attached(table)
 * Returns: whether `table` carries the capture trigger of either kind.
 */
create or replace function changecast.is_attached(target oid) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select 1 from pg_catalog.pg_trigger t
                   where t.tgrelid = target
                     and ((t.tgname = 'changecast_capture'
                           and t.tgfoid = 'changecast.capture()'::pg_catalog.regprocedure)
                          or (t.tgname = 'changecast_capture_insert'
                              and t.tgfoid = 'changecast.capture_set()'::pg_catalog.regprocedure)))
$$;

/*
 * Function: changecast.attach(table, resource_type, tenant_column, id_column)
 * As in V13; the capture triggers are the statement triggers where
 * changecast.captures_by_statement() says so, else the row trigger.
 */
create or replace function changecast.attach(target regclass, resource_type text, tenant_column text, id_column text)
returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
    qualified text := (select format('%I.%I', n.nspname, c.relname)
                       from pg_class c join pg_namespace n on n.oid = c.relnamespace
                       where c.oid = target);
    part      regclass;
begin
    if not has_table_privilege(current_user, target, 'TRIGGER') then
        raise exception 'changecast: role "%" (owner of schema changecast) may not attach triggers to %', current_user, qualified
            using errcode = 'insufficient_privilege',
                  hint = 'call changecast.watch() as the table''s owner: it lends this role TRIGGER for the call';
    end if;
    if changecast.captures_by_statement(target) then
        execute format('create trigger changecast_capture_insert after insert on %s '
                       'referencing new table as changecast_new '
                       'for each statement execute function changecast.capture_set(%L, %L, %L)',
                       qualified, resource_type, tenant_column, id_column);
        execute format('create trigger changecast_capture_update after update on %s '
                       'referencing old table as changecast_old new table as changecast_new '
                       'for each statement execute function changecast.capture_set(%L, %L, %L)',
                       qualified, resource_type, tenant_column, id_column);
        execute format('create trigger changecast_capture_delete after delete on %s '
                       'referencing old table as changecast_old '
                       'for each statement execute function changecast.capture_set(%L, %L, %L)',
                       qualified, resource_type, tenant_column, id_column);
        -- For writes in replica mode (logical replication's apply fires row triggers
        -- only); watch() makes it fire there alone.
        execute format('create trigger changecast_capture after insert or update or delete on %s '
                       'for each row execute function changecast.capture(%L, %L, %L)',
                       qualified, resource_type, tenant_column, id_column);
    else
        execute format('create trigger changecast_capture after insert or update or delete on %s '
                       'for each row execute function changecast.capture(%L, %L, %L)',
                       qualified, resource_type, tenant_column, id_column);
    end if;
    -- On the table and on each of its partitions: TRUNCATE triggers are not cloned.
    for part in select target union select p.relid from pg_partition_tree(target) p loop
        execute format('create trigger changecast_truncate before truncate on %s '
                       'for each statement execute function changecast.capture_truncate(%L, %L, %L)',
                       part, resource_type, tenant_column, id_column);
    end loop;
end
$$;

/*
 * Function: changecast.watch(table, resource_type, tenant_column, id_column, exclude_columns)
 * As in V13, for the capture triggers of either kind (a table watched with the row
 *   trigger gets the statement triggers where changecast.attach() gives them).
 * Parameters: as in V9.
 * Returns: void. Idempotent: watching a table again replaces its settings.
 * Algorithm: as the caller, who must hold the privileges of the table's owner (its
 *   owner, a member of that role, or a superuser): drop the table's triggers of ours;
 *   grant the service's role SELECT (for snapshots) and, for this call, TRIGGER on the
 *   table and its partitions; request the registration (checked and carried out as the
 *   service's role, see the header); make the triggers fire ALWAYS; take the TRIGGER
 *   back.
 * Security invoker, executable only where granted (sql/grants.sql): whoever may watch a
 *   table may put events into any tenant's stream (the tenant column is theirs to fill).
 */
create or replace function changecast.watch(
    target regclass,
    resource_type text,
    tenant_column text default 'tenant_id',
    id_column text default 'id',
    exclude_columns text[] default '{}'
) returns void
language plpgsql security invoker set search_path = pg_catalog, pg_temp as $$
declare
    service   oid := (select n.nspowner from pg_namespace n where n.nspname = 'changecast');
    grantee   text := (select quote_ident(r.rolname) from pg_roles r where r.oid = service);
    owner_oid oid;
    qualified text;
    lent      regclass[] := '{}';
    granted   regclass[] := '{}';
    part      regclass;
    lacking   name;
    capture_trigger name;
begin
    if target is null then
        raise exception 'changecast.watch: no table given' using errcode = 'null_value_not_allowed';
    end if;
    select c.relowner, format('%I.%I', n.nspname, c.relname) into owner_oid, qualified
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = target;
    if not pg_has_role(current_user, owner_oid, 'USAGE') then
        raise exception 'changecast.watch: role "%" may not watch % (only its owner "%", a role with that role''s privileges, or a superuser may)',
                current_user, target, owner_oid::regrole
            using errcode = 'insufficient_privilege',
                  hint = 'call watch() as the table''s owner; the role running changecast needs neither ownership nor membership';
    end if;
    -- Nothing stops a superuser, but this is code of the service's role running with the
    -- caller's rights: a superuser's should not be those (see the header).
    if (select r.rolsuper from pg_roles r where r.rolname = current_user)
       and owner_oid <> (select r.oid from pg_roles r where r.rolname = current_user) then
        raise warning 'changecast.watch: called as superuser "%"', current_user
            using detail = format('changecast.watch() runs with its caller''s rights and belongs to role %s, which could have replaced it', grantee),
                  hint = format('call it as the table''s owner: set role %s; (docs/roles.md)', owner_oid::regrole);
    end if;
    if (select c.relkind not in ('r', 'p') or c.relpersistence = 't' from pg_class c where c.oid = target) then
        raise exception 'changecast.watch: % is not a permanent table', target
            using errcode = 'wrong_object_type';
    end if;
    -- The service attaches the triggers and reads the table (snapshots, TRUNCATE) by
    -- name: it needs USAGE on the schema of the table and of each of its partitions.
    -- Only the schema's owner may decide that, so watch() asks rather than grants.
    select n.nspname into lacking
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid in (select target union select p.relid from pg_partition_tree(target) p)
       and not has_schema_privilege(service, n.oid, 'USAGE')
     order by 1 limit 1;
    if found then
        raise exception 'changecast.watch: role % (which runs changecast) has no USAGE on schema %, so it cannot attach triggers to % or read it',
                grantee, quote_ident(lacking), target
            using errcode = 'insufficient_privilege',
                  hint = format('as the owner of schema %s, run: grant usage on schema %s to %s',
                                quote_ident(lacking), quote_ident(lacking), grantee);
    end if;

    -- Either kind of capture trigger (attach() picks the kind anew).
    for capture_trigger in select t.tgname from pg_trigger t
                            where t.tgrelid = target
                              and t.tgname in ('changecast_capture', 'changecast_capture_insert',
                                               'changecast_capture_update', 'changecast_capture_delete') loop
        execute format('drop trigger %I on %s', capture_trigger, qualified);
    end loop;
    -- (pg_partition_tree() lists a partitioned table and its partitions, nothing else.)
    -- Each partition carries a TRUNCATE trigger of its own: TRUNCATE triggers are not
    -- cloned, and a partition can be truncated alone.
    for part in select target union select p.relid from pg_partition_tree(target) p loop
        if exists (select 1 from pg_trigger t where t.tgrelid = part and t.tgname = 'changecast_truncate') then
            execute format('drop trigger changecast_truncate on %s', part);
        end if;
    end loop;
    -- An explicit grant even where the service reaches the table through its owner's
    -- role, so that such a membership can be revoked without breaking snapshots; on
    -- partitions too, which the TRUNCATE trigger of one reads.
    for part in select target union select p.relid from pg_partition_tree(target) p loop
        if (select c.relowner from pg_class c where c.oid = part) <> service
           and not (select r.rolsuper from pg_roles r where r.oid = service)
           and not exists (select 1 from pg_class c, aclexplode(c.relacl) a
                           where c.oid = part and a.grantee = service and a.privilege_type = 'SELECT') then
            execute format('grant select on %s to %s', part, grantee);
            granted := granted || part;
        end if;
        if not has_table_privilege(service, part, 'TRIGGER') then
            execute format('grant trigger on %s to %s', part, grantee);
            lent := lent || part;
        end if;
    end loop;

    insert into changecast.watch_requests (table_name, resource_type, tenant_column, id_column, exclude_columns, granted_select)
    values (target, watch.resource_type, watch.tenant_column, watch.id_column, watch.exclude_columns, granted);

    -- Every write is captured exactly once, whatever the session_replication_role: the
    -- statement triggers in `origin` and `local`, the row trigger in `replica` (where
    -- logical replication's apply fires no statement trigger); a table with the row
    -- trigger alone fires it always.
    if exists (select 1 from pg_trigger t where t.tgrelid = target and t.tgname = 'changecast_capture_insert') then
        execute format('alter table %s enable trigger changecast_capture_insert, enable trigger changecast_capture_update, '
                       'enable trigger changecast_capture_delete, enable replica trigger changecast_capture', qualified);
    else
        execute format('alter table %s enable always trigger changecast_capture', qualified);
    end if;
    for part in select target union select p.relid from pg_partition_tree(target) p loop
        execute format('alter table %s enable always trigger changecast_truncate', part);
    end loop;
    foreach part in array lent loop
        execute format('revoke trigger on %s from %s', part, grantee);
    end loop;
end
$$;

/*
 * Function: changecast.unwatch(table)
 * As in V13, for the capture triggers of either kind.
 * Returns: true when the table was watched. Its journal rows stay until pruned.
 * Algorithm: as the caller, who must hold the privileges of the table's owner: request
 *   that the registration be forgotten (see the header), drop the triggers (on the
 *   table and its partitions), and take back the SELECT on them that watch() granted
 *   the service's role (recorded on the registration, returned by the request): a
 *   SELECT it held before watch() stays.
 * Security invoker, executable only where granted.
 */
create or replace function changecast.unwatch(target regclass) returns boolean
language plpgsql security invoker set search_path = pg_catalog, pg_temp as $$
declare
    service   oid := (select n.nspowner from pg_namespace n where n.nspname = 'changecast');
    grantee   text := (select quote_ident(r.rolname) from pg_roles r where r.oid = service);
    owner_oid oid;
    qualified text;
    attached  boolean;
    part      regclass;
    revoking  regclass[];
    capture_trigger name;
begin
    if target is null then
        raise exception 'changecast.unwatch: no table given' using errcode = 'null_value_not_allowed';
    end if;
    select c.relowner, format('%I.%I', n.nspname, c.relname) into owner_oid, qualified
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = target;
    if not pg_has_role(current_user, owner_oid, 'USAGE') then
        raise exception 'changecast.unwatch: role "%" may not unwatch % (only its owner "%", a role with that role''s privileges, or a superuser may)',
                current_user, target, owner_oid::regrole
            using errcode = 'insufficient_privilege';
    end if;
    -- Nothing stops a superuser, but this is code of the service's role running with the
    -- caller's rights: a superuser's should not be those (see the header).
    if (select r.rolsuper from pg_roles r where r.rolname = current_user)
       and owner_oid <> (select r.oid from pg_roles r where r.rolname = current_user) then
        raise warning 'changecast.unwatch: called as superuser "%"', current_user
            using detail = format('changecast.unwatch() runs with its caller''s rights and belongs to role %s, which could have replaced it', grantee),
                  hint = format('call it as the table''s owner: set role %s; (docs/roles.md)', owner_oid::regrole);
    end if;
    attached := exists (select 1 from pg_trigger t
                        where t.tgrelid = target
                          and ((t.tgname = 'changecast_capture'
                                and t.tgfoid = 'changecast.capture()'::regprocedure)
                               or (t.tgname = 'changecast_capture_insert'
                                   and t.tgfoid = 'changecast.capture_set()'::regprocedure)));

    insert into changecast.watch_requests (table_name, unwatch) values (target, true)
    returning to_revoke into revoking;

    -- Either kind of capture trigger (attach() picks the kind anew).
    for capture_trigger in select t.tgname from pg_trigger t
                            where t.tgrelid = target
                              and t.tgname in ('changecast_capture', 'changecast_capture_insert',
                                               'changecast_capture_update', 'changecast_capture_delete') loop
        execute format('drop trigger %I on %s', capture_trigger, qualified);
    end loop;
    for part in select target union select p.relid from pg_partition_tree(target) p loop
        if exists (select 1 from pg_trigger t where t.tgrelid = part and t.tgname = 'changecast_truncate') then
            execute format('drop trigger changecast_truncate on %s', part);
        end if;
    end loop;
    -- Only the SELECT that watch() granted: one granted otherwise is not ours to take.
    for part in select r from unnest(revoking) r where r::oid in (select c.oid from pg_class c) loop
        execute format('revoke select on %s from %s', part, grantee);
    end loop;
    return attached;
end
$$;


revoke all on function changecast.refuse_null_key(text, text, text, text) from public;
revoke all on function changecast.capture_set() from public;
revoke all on function changecast.captures_by_statement(oid) from public;

/*
 * Function: changecast.role_findings()
 * Returns: what changecast.privilege_findings() (V13's findings, renamed) says, and each
 *   watched table captured by statement triggers that has since become a partition or
 *   an inheritance child: a statement addressed to its parent fires no trigger of its
 *   own but the row trigger, which fires only in replica mode, so such writes are not
 *   captured until watch() runs again (it then gives the table the row trigger).
 *   Logged as warnings by `migrate` and `serve`.
 */
alter function changecast.role_findings() rename to privilege_findings;
create function changecast.role_findings() returns setof text
language sql stable set search_path = pg_catalog, pg_temp as $$
    select f from changecast.privilege_findings() f
    union all
    select format('watched table %s (resource type "%s") is now a partition or an inheritance child, '
                  'and its capture triggers do not see statements addressed to its parent: '
                  'as its owner, run select changecast.watch(%L, %L, %L, %L, exclude_columns => ...) again',
                  w.table_name, w.resource_type, w.table_name::text, w.resource_type, w.tenant_column, w.id_column)
      from changecast.watched w
     where exists (select 1 from pg_catalog.pg_trigger t
                   where t.tgrelid = w.table_name and t.tgname = 'changecast_capture_insert')
       and ((select c.relispartition from pg_catalog.pg_class c where c.oid = w.table_name)
            or exists (select 1 from pg_catalog.pg_inherits i where i.inhrelid = w.table_name))
$$;
revoke all on function changecast.role_findings() from public;

-- Tables watched before: converted where this role may (see the header), each capture
-- trigger enabled as its row trigger was.
do $$
declare
    w       record;
    verb    text;
begin
    for w in select x.table_name, x.resource_type, x.tenant_column, x.id_column, t.tgenabled,
                    format('%I.%I', n.nspname, c.relname) as qualified
               from changecast.watched x
               join pg_class c on c.oid = x.table_name
               join pg_namespace n on n.oid = c.relnamespace
               join pg_trigger t on t.tgrelid = x.table_name and t.tgname = 'changecast_capture'
                               and t.tgfoid = 'changecast.capture()'::regprocedure
              where changecast.captures_by_statement(x.table_name)
                and not exists (select 1 from pg_trigger s where s.tgrelid = x.table_name
                                and s.tgname = 'changecast_capture_insert')
                and pg_has_role(current_user, c.relowner, 'USAGE')
                and has_schema_privilege(current_user, n.oid, 'USAGE') loop
        execute format('create trigger changecast_capture_insert after insert on %s '
                       'referencing new table as changecast_new '
                       'for each statement execute function changecast.capture_set(%L, %L, %L)',
                       w.qualified, w.resource_type, w.tenant_column, w.id_column);
        execute format('create trigger changecast_capture_update after update on %s '
                       'referencing old table as changecast_old new table as changecast_new '
                       'for each statement execute function changecast.capture_set(%L, %L, %L)',
                       w.qualified, w.resource_type, w.tenant_column, w.id_column);
        execute format('create trigger changecast_capture_delete after delete on %s '
                       'referencing old table as changecast_old '
                       'for each statement execute function changecast.capture_set(%L, %L, %L)',
                       w.qualified, w.resource_type, w.tenant_column, w.id_column);
        -- The statement triggers take over where the row trigger fired outside replica
        -- mode; it keeps firing in replica mode where it did (see watch()).
        verb := case when w.tgenabled in ('A', 'O') then 'enable' else 'disable' end;
        execute format('alter table %s %s trigger changecast_capture_insert, %s trigger changecast_capture_update, '
                       '%s trigger changecast_capture_delete, %s trigger changecast_capture',
                       w.qualified, verb, verb, verb,
                       case w.tgenabled when 'A' then 'enable replica' when 'R' then 'enable replica' else 'disable' end);
    end loop;
    for w in select x.table_name, x.resource_type, x.tenant_column, x.id_column
               from changecast.watched x
               join pg_trigger t on t.tgrelid = x.table_name and t.tgname = 'changecast_capture'
                               and t.tgfoid = 'changecast.capture()'::regprocedure
              where changecast.captures_by_statement(x.table_name)
                and not exists (select 1 from pg_trigger s where s.tgrelid = x.table_name
                                and s.tgname = 'changecast_capture_insert') loop
        raise warning 'changecast: % keeps its row capture trigger (this role may not replace it)', w.table_name
            using hint = format('as its owner, run select changecast.watch(%L, %L, %L, %L, exclude_columns => ...) for the statement triggers',
                                w.table_name::text, w.resource_type, w.tenant_column, w.id_column);
    end loop;
end
$$;
