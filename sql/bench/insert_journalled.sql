-- pgbench: one single-row INSERT transaction into bench.journalled (tenants t0..t99).
\set tenant random(0, 99)
insert into bench.journalled (tenant_id, title) values ('t' || :tenant, 'pgbench row');
