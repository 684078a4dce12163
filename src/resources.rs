//! The watched tables themselves: which resource types exist, and the consistent
//! "current rows + cursor" read behind `/v1/snapshot`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::{Client, GenericClient, IsolationLevel};

use crate::auth::TenantId;
use crate::journal::{snapshot_cursor, DbResult, Journal, PgSnapshot};

/// A watched table, its identifiers already quoted for SQL by PostgreSQL.
struct WatchedTable {
    resource_type: String,
    table: String,
    tenant_column: String,
    id_column: String,
}

/// Entries whose table was dropped (or whose oid a new table reuses) carry no trigger of
/// ours: they are not watched, whatever `changecast.watched` still says. Names are
/// schema-qualified, whatever this connection's `search_path`.
const WATCHED_SQL: &str =
    "select w.resource_type, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
            quote_ident(w.tenant_column), quote_ident(w.id_column)
     from changecast.watched w
     join pg_catalog.pg_class c on c.oid = w.table_name
     join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where changecast.is_attached(w.table_name)
     order by w.resource_type";

async fn watched_tables(client: &impl GenericClient) -> DbResult<Vec<WatchedTable>> {
    let rows = client.query(WATCHED_SQL, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| WatchedTable {
            resource_type: row.get(0),
            table: row.get(1),
            tenant_column: row.get(2),
            id_column: row.get(3),
        })
        .collect())
}

/// The resource types subscribers may ask for right now.
pub async fn resource_types(client: &impl GenericClient) -> DbResult<Vec<String>> {
    Ok(watched_tables(client)
        .await?
        .into_iter()
        .map(|t| t.resource_type)
        .collect())
}

#[derive(Serialize)]
pub struct Snapshot {
    pub cursor: String,
    pub resources: BTreeMap<String, Vec<Box<RawValue>>>,
    pub truncated: bool,
}

/// The tenant's current rows of `types` (at most `limit` per type) and a cursor that
/// resumes exactly after them: rows and cursor come from one REPEATABLE READ snapshot.
pub async fn snapshot(
    client: &mut Client,
    journal: &Journal,
    tenant: &TenantId,
    types: &[String],
    limit: usize,
) -> DbResult<Snapshot> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // The first statement fixes the transaction's snapshot; every read below uses it.
    let row = tx
        .query_one("select pg_current_snapshot()::text", &[])
        .await?;
    let seen: PgSnapshot = row
        .get::<_, &str>(0)
        .parse()
        .expect("BUG: PostgreSQL printed an invalid pg_snapshot");
    let mut resources = BTreeMap::new();
    let mut truncated = false;
    for table in watched_tables(&tx)
        .await?
        .into_iter()
        .filter(|t| types.contains(&t.resource_type))
    {
        // The tenant column's own collation may be nondeterministic (case-insensitive,
        // say), merging tenants that differ in case: the bytewise `collate "C"` test
        // decides. The first test keeps an index on the column usable.
        let sql = format!(
            "select to_jsonb(t)::text from {table} t
             where t.{tenant}::text = $1 and (t.{tenant}::text collate \"C\") = $1
             order by t.{id} limit $2",
            table = table.table,
            tenant = table.tenant_column,
            id = table.id_column
        );
        let rows = tx
            .query(&sql, &[&tenant.as_str(), &(limit as i64 + 1)])
            .await?;
        truncated |= rows.len() > limit;
        let items = rows
            .iter()
            .take(limit)
            .map(|row| RawValue::from_string(row.get(0)).expect("BUG: jsonb prints valid JSON"))
            .collect();
        resources.insert(table.resource_type, items);
    }
    tx.commit().await?;
    Ok(Snapshot {
        cursor: snapshot_cursor(journal, tenant, seen),
        resources,
        truncated,
    })
}
