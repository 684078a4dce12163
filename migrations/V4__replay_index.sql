-- Replays read one tenant's rows in journal-id order, page after page: an index on
-- (tenant_id, id) lets each page start where the previous one ended, instead of
-- re-reading every row of the tenant since the cursor (rows^2 / page for a long replay).
-- Where a replay starts is found through the xid index and the primary key (see
-- src/journal/mod.rs), so the (tenant_id, xid) index has no reader left.
create index change_log_tenant_id on changecast.change_log (tenant_id, id);
drop index changecast.change_log_tenant_xid;
