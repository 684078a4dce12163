//! The watched tables themselves: which resource types exist ([`Catalog`]), and the
//! consistent "current rows + cursor" read behind `/v1/snapshot`.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Portal, Transaction};

use crate::journal::{snapshot_cursor, DbResult, Journal, PgSnapshot};
use crate::selection::Selection;
use crate::sync::lock;
use crate::tenant::TenantId;

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
            w.exclude_columns || changecast.excluded_names(w.table_name, w.exclude_attnums)
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

/// How long a lookup of the watched types waits for the database before the last list
/// read is used.
const TYPES_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The resource types subscribers may ask for: read afresh each time, the last list kept
/// for when the database does not answer.
pub struct Catalog {
    pool: deadpool_postgres::Pool,
    last_read: Mutex<Vec<String>>,
}

impl Catalog {
    /// A catalog reading through `pool`, `types` being the list read last.
    pub fn new(pool: deadpool_postgres::Pool, types: Vec<String>) -> Self {
        Catalog {
            pool,
            last_read: Mutex::new(types),
        }
    }

    /// The watched types, read afresh (a table watched a moment ago counts at once).
    /// While the database does not answer, the last list read is used, so subscribers
    /// can still connect (an HTTP error would stop an EventSource for good); their
    /// streams catch up once the database is back.
    pub async fn types(&self) -> Vec<String> {
        let lookup = async {
            let client = self.pool.get().await.map_err(|e| format!("{e:?}"))?;
            resource_types(&**client)
                .await
                .map_err(|e| format!("{e:?}"))
        };
        match tokio::time::timeout(TYPES_LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(types)) => {
                lock(&self.last_read).clone_from(&types);
                types
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading the watched types failed; using the last list");
                self.last_read()
            }
            Err(_) => {
                tracing::warn!("reading the watched types timed out; using the last list");
                self.last_read()
            }
        }
    }

    /// The watched types as last read, without asking the database.
    pub fn last_read(&self) -> Vec<String> {
        lock(&self.last_read).clone()
    }
}

/// What a snapshot hands on, in order: each resource type's name followed by its rows'
/// JSON, types in byte order (as a JSON object's keys are listed), then `End`.
#[derive(Debug)]
pub enum SnapshotPart {
    ResourceType(String),
    Row(String),
    End { truncated: bool },
}

/// Rows fetched per round trip while a snapshot reads a table's rows.
const SNAPSHOT_PAGE_ROWS: i32 = 500;
/// Most bytes of row JSON in one snapshot answer; beyond, it is `truncated` (as beyond
/// `limit` rows), so a table of huge rows cannot keep one request going for gigabytes.
pub const MAX_SNAPSHOT_BYTES: usize = 32 * 1024 * 1024;

/// A snapshot begun: its REPEATABLE READ transaction has fixed what it sees, and
/// `cursor` resumes exactly after it.
pub struct SnapshotRead<'a> {
    tx: Transaction<'a>,
    /// Each resource type with the portal its rows are read through.
    tables: Vec<(String, Portal)>,
    pub cursor: String,
}

/// Begins the tenant's snapshot of `types` (of only `ids`, if given): everything that
/// can fail before a row is read fails here, so an answer can still say so — the
/// transaction, the cursor, the watched tables, and each table's query, planned and its
/// lock taken (a table locked by a migration holds it up here, until the statement
/// timeout).
pub async fn begin_snapshot<'a>(
    client: &'a mut Client,
    journal: &Journal,
    tenant: &TenantId,
    types: &[String],
    ids: &Option<Vec<String>>,
) -> DbResult<SnapshotRead<'a>> {
    // On a standby, the transaction's snapshot lists no running transaction: its
    // cursor is instead a primary position the standby has replayed before the
    // transaction began, so the rows read include everything the cursor claims.
    let settled = journal.standby_settled(client).await?;
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
        .query_one(
            "select pg_current_snapshot()::text, pg_is_in_recovery()",
            &[],
        )
        .await?;
    let mut seen: PgSnapshot = row
        .get::<_, &str>(0)
        .parse()
        .expect("BUG: PostgreSQL printed an invalid pg_snapshot");
    if row.get::<_, bool>(1) {
        seen = match settled {
            // Rows committed between that position and the transaction's snapshot come
            // again from the cursor: a few.
            Some(position) => position.cursor().seen,
            // On a hot standby `pg_current_snapshot()` lists no running transaction, so
            // only what is below its `xmin` is known to be seen: the cursor claims no
            // more (a stream from it repeats rows the snapshot has, never skips one).
            None => PgSnapshot {
                xmin: seen.xmin,
                xmax: seen.xmin,
                xip: Vec::new(),
            },
        };
    }
    let mut tables: Vec<WatchedTable> = watched_tables(&tx)
        .await?
        .into_iter()
        .filter(|t| types.contains(&t.resource_type))
        .collect();
    // The answer lists types as a JSON object's keys, in byte order whatever the
    // database's collation.
    tables.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
    let mut reads = Vec::with_capacity(tables.len());
    for table in tables {
        // Its refusals (a tenant column of an owner's type, a definition newer than this
        // snapshot) must come before the answer's status, not cut the answer short.
        tx.query_one(
            "select changecast.snapshot_rows_plain($1::text::regclass)",
            &[&table.table],
        )
        .await?;
        let portal = tx
            .bind(
                &snapshot_rows_sql(&table),
                &[
                    &tenant.as_str(),
                    ids,
                    &table.id_key,
                    &table.exclude_columns,
                    &table.table,
                ],
            )
            .await?;
        reads.push((table.resource_type, portal));
    }
    Ok(SnapshotRead {
        tx,
        tables: reads,
        cursor: snapshot_cursor(journal, tenant, seen),
    })
}

/// The query reading one watched table's rows of a tenant for a snapshot: `$1` tenant,
/// `$2` ids (or null), `$3` the id column's name, `$4` excluded columns, `$5` the table;
/// it yields each row's JSON and its id as text.
///
/// The tenant column's own collation may be nondeterministic (case-insensitive, say),
/// merging tenants that differ in case: the bytewise `collate "C"` test decides. The
/// first test keeps an index on the column usable. `ids` narrow the read by the same
/// text `resource_id` carries. Rows are written as the capture trigger writes them: a
/// table with columns of types a non-superuser owns goes through
/// changecast.row_to_jsonb, so no cast their owner made runs as this role
/// (changecast.snapshot_rows_plain decides once, before any row is read).
fn snapshot_rows_sql(table: &WatchedTable) -> String {
    format!(
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
    )
}

impl SnapshotRead<'_> {
    /// Hands the rows in `selection`'s view (at most `limit` per type and
    /// [`MAX_SNAPSHOT_BYTES`] in all), without excluded columns (nor those the token's
    /// scope omits: [`Selection::snapshot_row`]), to `out` one at a time,
    /// waiting while it is full, then `End`. Rows are read page by page through a portal
    /// and each page as it arrives, so memory holds a few rows, not the answer. Row
    /// filters are the subscription's own ([`Selection::includes_row`]), so views agree
    /// with live delivery exactly. Answers whether it got to the end; it stops, also in
    /// the middle of a page being read, as soon as `out`'s receiver is gone.
    pub async fn send_rows(
        self,
        selection: &Selection,
        limit: usize,
        out: &mpsc::Sender<SnapshotPart>,
    ) -> DbResult<bool> {
        let SnapshotRead { tx, tables, .. } = self;
        let mut truncated = false;
        let mut bytes = 0;
        for (resource_type, portal) in tables {
            if out
                .send(SnapshotPart::ResourceType(resource_type.clone()))
                .await
                .is_err()
            {
                return Ok(false);
            }
            let mut sent = 0;
            'pages: loop {
                let mut rows =
                    std::pin::pin!(tx.query_portal_raw(&portal, SNAPSHOT_PAGE_ROWS).await?);
                let mut in_page = 0;
                loop {
                    let row = tokio::select! {
                        row = rows.next() => row,
                        _ = out.closed() => return Ok(false),
                    };
                    let Some(row) = row else { break };
                    let row = row?;
                    in_page += 1;
                    let resource_id: Option<&str> = row.get(1);
                    let Some(json) =
                        selection.snapshot_row(&resource_type, row.get(0), resource_id)
                    else {
                        continue;
                    };
                    if sent == limit || bytes + json.len() > MAX_SNAPSHOT_BYTES {
                        truncated = true;
                        break 'pages;
                    }
                    sent += 1;
                    bytes += json.len();
                    if out.send(SnapshotPart::Row(json)).await.is_err() {
                        return Ok(false);
                    }
                }
                if in_page < SNAPSHOT_PAGE_ROWS {
                    break;
                }
            }
        }
        tx.commit().await?;
        let _ = out.send(SnapshotPart::End { truncated }).await;
        Ok(true)
    }
}
