-- changecast: watch() with least privilege (API.md §2).
--
-- The table's owner (or a superuser), granted EXECUTE on watch(), watches its table
-- whatever role runs the service. The service's role (the owner of this schema) needs no
-- ownership of application tables and no membership in their owners' roles: watch()
-- gives it SELECT on the table, for snapshots, and nothing more.
--
-- * watch() and unwatch() run with the caller's rights (SECURITY INVOKER): granting the
--   service SELECT on a table is for its owner alone. That is code owned by the service's
--   role running with the caller's rights, so whoever controls that role controls what
--   the next caller does (CREATE OR REPLACE): call them as the table's owner (a superuser
--   SETs ROLE to it first), never as a superuser (docs/roles.md). They do no more as the
--   caller than only a table's owner may: drop and re-enable the triggers (ALWAYS, also
--   in replica mode), grant and revoke the service's SELECT, lend it TRIGGER.
-- * What only the service's role may do — write `changecast.watched`, attach the trigger
--   functions — runs as that role, and only on a request the caller made: watch()
--   inserts a row into `changecast.watch_requests`, whose `requested_by` nobody may
--   write: its default, `current_user`, names the role whose rights the inserting
--   statement runs with. After SET ROLE that is the role set; inside a security-definer
--   function that function's owner — never a more privileged session user behind them,
--   as `session_user` would be (a security-definer function of an attacker's, called by
--   a table's owner or a superuser, could otherwise act in their name). The AFTER
--   trigger, security definer, carries the request out only if that role holds the
--   privileges of the table's owner and EXECUTE on watch() (unwatch()), and removes it.
--   Row security would not do: a role with BYPASSRLS skips policies.
-- * To attach its triggers, the service's role holds TRIGGER on the table (and its
--   partitions) for the length of the call: watch() grants it before its request and
--   revokes it after, in the caller's transaction, so no other session ever sees it.
-- * The capture trigger functions stay security definer (application roles need no
--   rights on the journal) with every check of V3 and V9: the exact registration, and no
--   cast of a type a non-superuser owns runs with the service's rights (such values are
--   written through their types' output functions, which only a superuser can have
--   written). Nothing else of a table owner's runs as the service: attaching a trigger,
--   granting, reading catalogs run none of its code, and snapshots read with row
--   security off (a table whose policies apply to the service's role fails its
--   snapshot rather than run them).
-- * Tables watched before this migration keep their triggers and registrations. Where
--   the service's role reached a table through membership in its owner's role, it is
--   granted SELECT on it (and USAGE on its schema) here, so that the membership can be
--   revoked without breaking snapshots and TRUNCATE; changecast.role_findings()
--   (reported by the service at start) names such memberships, and first what would
--   break without them. (Partitions of a partitioned table watched before get their own
--   TRUNCATE triggers when it is watched again.)
-- * The service's role needs USAGE on the schema of a watched table, which only the
--   schema's owner may grant: watch() asks for it rather than grants it.
-- * Partitions: each carries a TRUNCATE trigger of its own (they are not cloned), and the
--   service SELECT on it (the trigger reads it). The watcher role may execute capture()
--   and capture_truncate() (sql/grants.sql), so that adding a partition can clone the
--   capture trigger: both still refuse any table and arguments not registered.
-- * unwatch() takes back only the SELECT that watch() granted (recorded on the
--   registration).

/*
 * Table: changecast.watch_requests
 * A request of watch() or unwatch(). Empty between statements: each row is removed by
 * the trigger that carries it out. Who made it is not the inserter's to say: anyone may
 * insert the request's columns, none may name `requested_by` or `xact`, whose defaults —
 * built-in expressions, evaluated as the inserting role — fill them in. So no code of
 * this schema runs with the inserter's rights here: the triggers that look up, check and
 * carry out the request run as this schema's owner.
 */
create table changecast.watch_requests (
    table_name      regclass not null,
    unwatch         boolean not null default false,
    resource_type   text,
    tenant_column   text,
    id_column       text,
    exclude_columns text[],
    -- watch(): the tables (the watched one, its partitions) on which it granted the
    -- service SELECT, which unwatch() is to take back.
    granted_select  regclass[] not null default '{}',
    -- The role in effect for the inserting statement (see the header).
    requested_by    name not null default current_user,
    xact            xid8 not null default pg_current_xact_id(),
    -- unwatch(): what watch() granted, for it to take back (RETURNING); filled in by
    -- the BEFORE trigger, and returned only if the request is carried out.
    to_revoke       regclass[]
);
revoke all on changecast.watch_requests from public;
-- Anyone may ask; the trigger decides (and watch() callers need no other grant).
grant insert (table_name, unwatch, resource_type, tenant_column, id_column, exclude_columns, granted_select)
    on changecast.watch_requests to public;
grant select (to_revoke) on changecast.watch_requests to public;

alter table changecast.watched add column select_granted regclass[] not null default '{}';

/*
 * Function: changecast.look_up_request()  (BEFORE INSERT row trigger of watch_requests)
 * Returns: the request; for unwatch(), with what watch() granted on the table (none for
 *   any other request). Security definer: only this role reads `changecast.watched`.
 *   The AFTER trigger decides whether the request is carried out; if not, the statement
 *   fails and returns nothing.
 */
create function changecast.look_up_request() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    new.to_revoke := case when new.unwatch
                          then coalesce((select w.select_granted from changecast.watched w
                                         where w.table_name = new.table_name), '{}')
                     end;
    return new;
end
$$;

/*
 * Function: changecast.register(table, resource_type, tenant_column, id_column, exclude_columns)
 * Returns: void. Checks the arguments as watch() did in V9, records the table in
 *   `changecast.watched` (replacing an earlier registration) and attaches the triggers.
 * Internal: runs as the schema owner, on a request made by the table's owner
 *   (changecast.carry_out_request). The table's old triggers are gone and the service
 *   holds TRIGGER on it (watch() saw to both).
 */
create function changecast.register(
    target regclass,
    resource_type text,
    tenant_column text,
    id_column text,
    exclude_columns text[]
) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
    excluded text;
begin
    if (select c.relkind not in ('r', 'p') or c.relpersistence = 't' from pg_class c where c.oid = target) then
        raise exception 'changecast.watch: % is not a permanent table', target
            using errcode = 'wrong_object_type';
    end if;
    if resource_type is null or resource_type !~ '^[a-z][a-z0-9_]{0,62}$' then
        raise exception 'changecast.watch: resource type % must match [a-z][a-z0-9_]* (at most 63 characters)',
                coalesce(quote_literal(resource_type), 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    if not exists (select 1 from pg_attribute
                   where attrelid = target and attname = tenant_column
                     and attnum > 0 and not attisdropped) then
        raise exception 'changecast.watch: table % has no tenant column "%"', target, tenant_column
            using errcode = 'undefined_column';
    end if;
    if not exists (select 1 from pg_attribute
                   where attrelid = target and attname = id_column
                     and attnum > 0 and not attisdropped) then
        raise exception 'changecast.watch: table % has no id column "%"', target, id_column
            using errcode = 'undefined_column';
    end if;
    if exists (select 1 from changecast.owned_columns(target) o where o.column_name = tenant_column) then
        raise exception 'changecast.watch: the tenant column "%" of % has a type owned by a role that is not a superuser', tenant_column, target
            using errcode = 'feature_not_supported',
                  hint = 'use a column of a built-in type (or a domain over one) as the tenant column: tenants are compared as text, and a cast to text of such a type is its owner''s code';
    end if;
    if exclude_columns is null or array_position(exclude_columns, null) is not null then
        raise exception 'changecast.watch: exclude_columns must be an array of column names without nulls'
            using errcode = 'null_value_not_allowed';
    end if;
    foreach excluded in array exclude_columns loop
        if excluded in (tenant_column, id_column) then
            raise exception 'changecast.watch: column "%" of % names the tenant or the id and cannot be excluded',
                    excluded, target
                using errcode = 'invalid_parameter_value';
        end if;
        if not exists (select 1 from pg_attribute
                       where attrelid = target and attname = excluded
                         and attnum > 0 and not attisdropped) then
            raise exception 'changecast.watch: table % has no column "%" to exclude', target, excluded
                using errcode = 'undefined_column';
        end if;
    end loop;

    -- Entries of dropped tables name nothing any more: their resource types are free.
    -- (The target's own entry counts as one too: its triggers were just dropped. It is
    -- written again below.)
    delete from changecast.watched w where not changecast.is_attached(w.table_name);
    if exists (select 1 from changecast.watched w
               where w.resource_type = register.resource_type and w.table_name <> target) then
        raise exception 'changecast.watch: resource type "%" already names another table', resource_type
            using errcode = 'unique_violation';
    end if;

    insert into changecast.watched (table_name, resource_type, tenant_column, id_column,
                                    exclude_columns, exclude_attnums)
    values (target, register.resource_type, register.tenant_column, register.id_column,
            array(select distinct unnest(register.exclude_columns) order by 1),
            array(select a.attnum from pg_attribute a
                  where a.attrelid = target and a.attname = any(register.exclude_columns)
                    and a.attnum > 0 and not a.attisdropped
                  order by 1))
    on conflict (table_name) do update
        set resource_type = excluded.resource_type,
            tenant_column = excluded.tenant_column,
            id_column = excluded.id_column,
            exclude_columns = excluded.exclude_columns,
            exclude_attnums = excluded.exclude_attnums,
            plain_natts = null,
            plain_filenode = null;
    perform changecast.check_definition_current(target);
    if not exists (select 1 from changecast.owned_columns(target)) then
        perform changecast.remember_plain(target);
    end if;
    perform changecast.attach(target, resource_type, tenant_column, id_column);
end
$$;

/*
 * Function: changecast.attach(table, resource_type, tenant_column, id_column)
 * Returns: void. Creates the capture and truncate triggers of `table` with these
 *   arguments. Internal: runs as the schema owner, which needs TRIGGER on the table (and
 *   its partitions); the caller has dropped earlier triggers of these names, and
 *   watch() makes the new ones fire ALWAYS (only the table's owner may).
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
    execute format('create trigger changecast_capture after insert or update or delete on %s '
                   'for each row execute function changecast.capture(%L, %L, %L)',
                   qualified, resource_type, tenant_column, id_column);
    -- On the table and on each of its partitions: TRUNCATE triggers are not cloned.
    for part in select target union select p.relid from pg_partition_tree(target) p loop
        execute format('create trigger changecast_truncate before truncate on %s '
                       'for each statement execute function changecast.capture_truncate(%L, %L, %L)',
                       part, resource_type, tenant_column, id_column);
    end loop;
end
$$;

/*
 * Function: changecast.capture_truncate()  (BEFORE TRUNCATE statement trigger)
 * As in V9, with two changes for partitions, which carry a trigger of their own:
 *   - the registration may be an ancestor's (as in capture());
 *   - one `truncated` entry per tenant and resource type and transaction: truncating a
 *     partitioned table fires its trigger and each partition's.
 *   A partition is read by itself where this role may (watch() grants it SELECT), else
 *   through the registered table, as rows of that partition.
 */
create or replace function changecast.capture_truncate() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set row_security = off as $$
declare
    registered  regclass;
    tenant_text text;
    source      text;
begin
    select w.table_name into registered from changecast.watched w
     where w.table_name = tg_relid
       and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
    if not found then
        select w.table_name into registered from changecast.watched w
         where w.table_name in (select a.relid from pg_partition_ancestors(tg_relid) a)
           and (w.resource_type, w.tenant_column, w.id_column) = (tg_argv[0], tg_argv[1], tg_argv[2]);
        if not found then
            raise exception 'changecast: %.% is not watched as "%" (tenant column "%", id column "%")',
                    tg_table_schema, tg_table_name, tg_argv[0], tg_argv[1], tg_argv[2]
                using errcode = 'insufficient_privilege',
                      hint = 'attach the trigger with changecast.watch()';
        end if;
    end if;
    perform changecast.check_definition_current(tg_relid);
    if exists (select 1 from changecast.owned_columns(tg_relid) o where o.column_name = tg_argv[1]) then
        tenant_text := format('pg_catalog.format(''%%s'', t.%I)', tg_argv[1]);
    else
        tenant_text := format('t.%I::pg_catalog.text', tg_argv[1]);
    end if;
    if registered = tg_relid or has_table_privilege(tg_relid, 'SELECT') then
        source := format('%I.%I t where true', tg_table_schema, tg_table_name);
    else
        source := format('%s t where t.tableoid in (select p.relid from pg_catalog.pg_partition_tree(%s) p)',
                         registered, tg_relid::oid);
    end if;
    -- (The journal's tenant column has the database's collation, which is deterministic:
    -- comparing under it compares bytes, and uses the (tenant_id, xid) index.)
    execute format('insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                    select d.tenant, $1, ''truncated'', '''', ''{}''::jsonb
                    from (select distinct %1$s collate "C" as tenant
                          from %2$s and t.%3$I is not null) d
                    where not exists (select 1 from changecast.change_log l
                                      where l.tenant_id = d.tenant collate "default"
                                        and l.xid = pg_catalog.pg_current_xact_id()
                                        and l.resource_type = $1 and l.event = ''truncated'')',
                   tenant_text, source, tg_argv[1])
        using tg_argv[0];
    perform changecast.ring();
    return null;
end
$$;

/*
 * Function: changecast.carry_out_request()  (AFTER INSERT row trigger of watch_requests)
 * Returns: null. Refuses (insufficient_privilege) unless the role that made the request
 *   holds the privileges of the table's owner (what ALTER TABLE asks; a superuser does)
 *   and EXECUTE on watch() or unwatch(), whichever is asked for; then registers
 *   (changecast.register) or forgets the table and removes the request.
 * Security definer: `changecast.watched` and the trigger functions are this role's.
 */
create function changecast.carry_out_request() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    owner_oid oid := (select c.relowner from pg_class c where c.oid = new.table_name);
    asked     regprocedure := case when new.unwatch
                                   then 'changecast.unwatch(regclass)'::regprocedure
                                   else 'changecast.watch(regclass, text, text, text, text[])'::regprocedure
                              end;
    granted   regclass[];
begin
    if owner_oid is null then
        raise exception 'changecast: no table given' using errcode = 'null_value_not_allowed';
    end if;
    if not has_function_privilege(new.requested_by, asked, 'EXECUTE') then
        raise exception 'changecast: role "%" may not call %', new.requested_by, asked
            using errcode = 'insufficient_privilege';
    end if;
    if not pg_has_role(new.requested_by, owner_oid, 'USAGE') then
        raise exception 'changecast: role "%" may not watch or unwatch % (only its owner "%", a role with that role''s privileges, or a superuser may)',
                new.requested_by, new.table_name, owner_oid::regrole
            using errcode = 'insufficient_privilege';
    end if;
    if new.unwatch then
        delete from changecast.watched w where w.table_name = new.table_name;
    else
        -- (Watching again finds the SELECT it granted before: it stays watch()'s. Read
        -- first: register() writes the registration anew.)
        granted := coalesce((select w.select_granted from changecast.watched w
                             where w.table_name = new.table_name), '{}') || new.granted_select;
        perform changecast.register(new.table_name, new.resource_type, new.tenant_column,
                                    new.id_column, new.exclude_columns);
        update changecast.watched w
           set select_granted = array(select distinct g from unnest(granted) g
                                      where g::oid in (select c.oid from pg_class c))
         where w.table_name = new.table_name;
    end if;
    delete from changecast.watch_requests r where r.xact = new.xact;
    return null;
end
$$;

create trigger look_up before insert on changecast.watch_requests
    for each row execute function changecast.look_up_request();
create trigger carry_out after insert on changecast.watch_requests
    for each row execute function changecast.carry_out_request();
alter table changecast.watch_requests enable always trigger look_up, enable always trigger carry_out;

/*
 * Function: changecast.watch(table, resource_type, tenant_column, id_column, exclude_columns)
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

    if exists (select 1 from pg_trigger t where t.tgrelid = target and t.tgname = 'changecast_capture') then
        execute format('drop trigger changecast_capture on %s', qualified);
    end if;
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

    execute format('alter table %s enable always trigger changecast_capture', qualified);
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
                        where t.tgrelid = target and t.tgname = 'changecast_capture'
                          and t.tgfoid = 'changecast.capture()'::regprocedure);

    insert into changecast.watch_requests (table_name, unwatch) values (target, true)
    returning to_revoke into revoking;

    if exists (select 1 from pg_trigger t where t.tgrelid = target and t.tgname = 'changecast_capture') then
        execute format('drop trigger changecast_capture on %s', qualified);
    end if;
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

/*
 * Function: changecast.service_holds(acl, object_owner, privilege)
 * Returns: whether the service's role holds `privilege` on an object with this ACL and
 *   owner without a membership in the owner of a watched table (which role_findings()
 *   recommends revoking): as a superuser, as the object's owner, or through a grant to
 *   PUBLIC, to itself or to another role it belongs to. has_*_privilege() would count
 *   such memberships, and has_table_privilege() ignores schema USAGE altogether.
 */
create function changecast.service_holds(acl aclitem[], object_owner oid, privilege text)
returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
    select s.rolsuper or s.oid = object_owner or exists (
        select 1 from aclexplode(acl) a
        where a.privilege_type = privilege
          and (a.grantee in (0, s.oid)
               or (pg_has_role(s.oid, a.grantee, 'USAGE')
                   and a.grantee <> object_owner
                   and a.grantee not in (select c.relowner
                                         from changecast.watched w join pg_class c on c.oid = w.table_name))))
    from pg_namespace n join pg_roles s on s.oid = n.nspowner
    where n.nspname = 'changecast'
$$;

/*
 * Function: changecast.role_findings()
 * Returns: one line per thing about roles an operator should know, for the service to
 *   report at start (and anyone who may call it to read), those that break something
 *   first:
 *   - watched tables (or their partitions) whose schema the service's role may not use,
 *     or that it may not read, but through a membership: attaching triggers, snapshots
 *     and TRUNCATE fail (or will, once the membership goes);
 *   - watched tables with row security on whose policies would apply to the service's
 *     role (no BYPASSRLS, not their owner): their snapshots and TRUNCATE fail;
 *   - memberships of the service's role in roles owning watched tables it does not own:
 *     watch() needs none of them since this migration (the service may have other
 *     reasons for one: it is named, not revoked).
 */
create function changecast.role_findings() returns setof text
language sql stable set search_path = pg_catalog, pg_temp as $$
    with service as (
        select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
        from pg_namespace n join pg_roles r on r.oid = n.nspowner
        where n.nspname = 'changecast'
    ),
    watched as (
        select w.table_name, w.resource_type, c.relowner
        from changecast.watched w join pg_class c on c.oid = w.table_name
    ),
    member as (
        select w.table_name, w.resource_type, c.oid as relid, c.relowner, c.relacl,
               c.relrowsecurity, c.relforcerowsecurity, n.nspname, n.nspowner, n.nspacl
        from watched w,
             lateral (select w.table_name::oid as relid union select p.relid from pg_partition_tree(w.table_name) p) t,
             pg_class c, pg_namespace n
        where c.oid = t.relid and n.oid = c.relnamespace
    ),
    finding as (
        select 1 as rank,
               format('role %I, which runs changecast, has no USAGE on schema %I (of watched table %s, resource type "%s")%s: '
                      'attaching its triggers, its snapshots and TRUNCATE fail; as the schema''s owner run: grant usage on schema %I to %I',
                      s.rolname, m.nspname, m.table_name::text, m.resource_type,
                      case when has_schema_privilege(s.oid, m.nspname, 'USAGE') then ' but through a membership' else '' end,
                      m.nspname, s.rolname) as line
        from service s, member m
        where not changecast.service_holds(m.nspacl, m.nspowner, 'USAGE')
        group by s.oid, s.rolname, m.nspname, m.table_name, m.resource_type
        union all
        select 2,
               format('role %I, which runs changecast, may not read watched table %s (resource type "%s")%s: '
                      'its snapshots fail; its owner grants that by calling changecast.watch() again '
                      '(or: grant select on %s to %I)',
                      s.rolname, m.table_name::text, m.resource_type,
                      case when has_table_privilege(s.oid, m.relid, 'SELECT') then ' but through a membership' else '' end,
                      m.table_name::text, s.rolname)
        from service s, member m
        where m.relid = m.table_name and not changecast.service_holds(m.relacl, m.relowner, 'SELECT')
        union all
        select 3,
               format('watched table %s (resource type "%s") has row security on%s and role %I, which runs changecast, '
                      'is subject to its policies: its snapshots and TRUNCATE fail; turn row security off on it, '
                      'or (as a superuser) alter role %I bypassrls',
                      m.table_name::text, m.resource_type,
                      case when m.relid <> m.table_name then format(' (partition %s)', m.relid::regclass) else '' end,
                      s.rolname, s.rolname)
        from service s, member m
        where m.relrowsecurity and not (s.rolsuper or s.rolbypassrls)
          and (m.relowner <> s.oid or m.relforcerowsecurity)
        union all
        select 4,
               format('role %I, which runs changecast, is a member of role %I, owner of watched %s %s: '
                      'watch() no longer needs that (the table''s owner calls it); once nothing else does, '
                      'and no line above names these tables, run: revoke %I from %I',
                      s.rolname, o.rolname,
                      case when count(*) = 1 then 'table' else 'tables' end,
                      string_agg(w.table_name::text, ', ' order by w.table_name::text),
                      o.rolname, s.rolname)
        from service s, watched w, pg_roles o
        where o.oid = w.relowner and w.relowner <> s.oid and not s.rolsuper
          and pg_has_role(s.oid, w.relowner, 'MEMBER')
        group by s.rolname, o.rolname
    )
    select line from finding order by rank, line
$$;

revoke all on function changecast.register(regclass, text, text, text, text[]) from public;
revoke all on function changecast.attach(regclass, text, text, text) from public;
revoke all on function changecast.carry_out_request() from public;
revoke all on function changecast.look_up_request() from public;
revoke all on function changecast.role_findings() from public;
revoke all on function changecast.service_holds(aclitem[], oid, text) from public;

-- Tables watched before: where this role reaches a table, or the USAGE on its schema (or
-- a partition's), through its owner's role, an explicit grant lets that membership go
-- without breaking snapshots and TRUNCATE. (Where it cannot grant, role_findings() says
-- what is missing.)
do $$
declare
    w record;
begin
    if (select rolsuper from pg_roles where rolname = current_user) then
        return;
    end if;
    for w in select distinct n.nspname
               from changecast.watched x,
                    lateral (select x.table_name::oid as relid union select p.relid from pg_partition_tree(x.table_name) p) t,
                    pg_class c, pg_namespace n
              where c.oid = t.relid and n.oid = c.relnamespace
                and not changecast.service_holds(n.nspacl, n.nspowner, 'USAGE')
                and pg_has_role(current_user, n.nspowner, 'USAGE') loop
        execute format('grant usage on schema %I to %I', w.nspname, current_user);
    end loop;
    for w in select c.oid::regclass as table_name
               from changecast.watched x join pg_class c on c.oid = x.table_name
              where c.relowner <> (select oid from pg_roles where rolname = current_user)
                and pg_has_role(current_user, c.relowner, 'USAGE') loop
        execute format('grant select on %s to %I', w.table_name, current_user);
        update changecast.watched x set select_granted = array[w.table_name]
         where x.table_name = w.table_name;
    end loop;
end
$$;
