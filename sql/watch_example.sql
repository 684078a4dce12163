-- A worked example: make an application table live.
-- Run with: psql "$DATABASE_URL" -f sql/watch_example.sql

create table if not exists public.invoices (
    number     bigint primary key,
    org_id     text not null,          -- the tenant
    customer   text not null,
    total      numeric(12, 2) not null,
    paid       boolean not null default false
);

-- Every insert, update and delete of public.invoices now reaches subscribers of the
-- row's org as resource type "invoice".
select changecast.watch('public.invoices', 'invoice', tenant_column => 'org_id', id_column => 'number');

insert into public.invoices values (1001, 'acme', 'Wile E. Coyote', 99.95);
update public.invoices set paid = true where number = 1001;
update public.invoices set paid = true where number = 1001;   -- changes nothing: no event

-- Which tables are watched, as what:
select table_name, resource_type, tenant_column, id_column from changecast.watched;

-- To stop: select changecast.unwatch('public.invoices');
