//! The watched tables themselves: which resource types exist, and the consistent
//! "current rows + cursor" read behind `/v1/snapshot`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_postgres::{Client, GenericClient, IsolationLevel};

use crate::auth::TenantId;
use crate::journal::{snapshot_cursor, DbResult, Journal, PgSnapshot};
use crate::selection::Selection;

/// A watched table, its identifiers already quoted for SQL by PostgreSQL.
struct WatchedTable {
    resource_type: String,
    table: String,
    tenant_column: String,
    id_column: String,
    /// The id column's name as is (a JSON key of the row).
    id_key: String,
    /// Columns that never leave the database.
    exclude_columns: Vec<String>,
}

/// Entries whose table was dropped (or whose oid a new table reuses) carry no trigger of
/// ours: they are not watched, whatever `changecast.watched` still says. Names are
/// schema-qualified, whatever this connection's `search_path`; functions too, so none a
/// table owner creates on that path can stand in for them. Excluded columns are kept by
/// attribute number: their current names.
const WATCHED_SQL: &str =
    "select w.resource_type,
            pg_catalog.quote_ident(n.nspname::text) || '.' || pg_catalog.quote_ident(c.relname::text),
            pg_catalog.quote_ident(w.tenant_column), pg_catalog.quote_ident(w.id_column), w.id_column,
            changecast.excluded_names(w.table_name, w.exclude_attnums)
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
            id_key: row.get(4),
            exclude_columns: row.get(5),
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

/// Rows fetched per round trip while a snapshot filters a table's rows.
const SNAPSHOT_PAGE_ROWS: i32 = 500;
/// Most bytes of row JSON in one snapshot answer; beyond, it is `truncated` (as beyond
/// `limit` rows), so a table of huge rows cannot make one request hold gigabytes.
pub const MAX_SNAPSHOT_BYTES: usize = 32 * 1024 * 1024;

/// The tenant's current rows of `types` in `selection`'s view (at most `limit` per type
/// and [`MAX_SNAPSHOT_BYTES`] in all),
/// without excluded columns, and a cursor that resumes exactly after them: rows and
/// cursor come from one REPEATABLE READ snapshot. Row filters are the subscription's own
/// ([`Selection::includes_row`]): rows are read page by page through a portal and
/// filtered here, so memory stays bounded and views agree with live delivery exactly.
pub async fn snapshot(
    client: &mut Client,
    journal: &Journal,
    tenant: &TenantId,
    types: &[String],
    selection: &Selection,
    limit: usize,
) -> DbResult<Snapshot> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // Reading a table as this role must run nothing its owner wrote: no function found
    // through a search_path the owner may create in, and no row-security policy (with
    // row_security off, a table with policies that apply fails the read instead).
    // Neither statement takes the transaction's snapshot.
    tx.batch_execute("set local search_path = pg_catalog, pg_temp; set local row_security = off")
        .await?;
    // The first query fixes the transaction's snapshot; every read below uses it.
    let row = tx
        .query_one("select pg_current_snapshot()::text", &[])
        .await?;
    let seen: PgSnapshot = row
        .get::<_, &str>(0)
        .parse()
        .expect("BUG: PostgreSQL printed an invalid pg_snapshot");
    let mut resources = BTreeMap::new();
    let mut truncated = false;
    let mut bytes = 0;
    for table in watched_tables(&tx)
        .await?
        .into_iter()
        .filter(|t| types.contains(&t.resource_type))
    {
        // The tenant column's own collation may be nondeterministic (case-insensitive,
        // say), merging tenants that differ in case: the bytewise `collate "C"` test
        // decides. The first test keeps an index on the column usable. `ids` narrow the
        // read by the same text `resource_id` carries. Rows are written as the capture
        // trigger writes them: a table with columns of types a non-superuser owns goes
        // through changecast.row_to_jsonb, so no cast their owner made runs as this role
        // (changecast.snapshot_rows_plain decides once, before any row is read).
        let sql = format!(
            "select r.row::text, r.row ->> $3
             from (select case when (select changecast.snapshot_rows_plain($5::text::regclass))
                               then to_jsonb(t)
                               else changecast.row_to_jsonb($5::text::regclass, t) end
                          - $4::text[] as row,
                          t.{id} as sort_key
                   from {table} t
                   where (select changecast.snapshot_rows_plain($5::text::regclass)) is not null
                     and t.{tenant}::text = $1 and (t.{tenant}::text collate \"C\") = $1) r
             where $2::text[] is null or (r.row ->> $3) = any($2)
             order by r.sort_key",
            table = table.table,
            tenant = table.tenant_column,
            id = table.id_column
        );
        let portal = tx
            .bind(
                &sql,
                &[
                    &tenant.as_str(),
                    &selection.ids,
                    &table.id_key,
                    &table.exclude_columns,
                    &table.table,
                ],
            )
            .await?;
        let mut items = Vec::new();
        'pages: loop {
            let rows = tx.query_portal(&portal, SNAPSHOT_PAGE_ROWS).await?;
            let last_page = rows.len() < SNAPSHOT_PAGE_ROWS as usize;
            for row in rows {
                let json: String = row.get(0);
                let resource_id: Option<&str> = row.get(1);
                if !selection.rows.is_empty() {
                    let values: Map<String, Value> =
                        serde_json::from_str(&json).expect("BUG: to_jsonb of a row is an object");
                    if !selection.includes_row(&values, resource_id.unwrap_or_default()) {
                        continue;
                    }
                }
                if items.len() == limit || bytes + json.len() > MAX_SNAPSHOT_BYTES {
                    truncated = true;
                    break 'pages;
                }
                bytes += json.len();
                items.push(RawValue::from_string(json).expect("BUG: jsonb prints valid JSON"));
            }
            if last_page {
                break;
            }
        }
        resources.insert(table.resource_type, items);
    }
    tx.commit().await?;
    Ok(Snapshot {
        cursor: snapshot_cursor(journal, tenant, seen),
        resources,
        truncated,
    })
}
