//! The roles of a managed database (API.md §2, docs/roles.md): an admin role that is not
//! a superuser makes the database and the roles with sql/roles.sql; the changecast role
//! migrates, runs sql/grants.sql and serves, owning no application table and a member of
//! no role; the application's migration role watches its own tables; its writer role
//! writes them. Everything through real roles, `psql` and a real `changecast` process.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::helpers::process::ServiceProcess;
use crate::helpers::*;

const PASSWORD: &str = "changecast";

static SETUPS: AtomicUsize = AtomicUsize::new(0);

/// One managed database and its four roles (cluster-wide names, unique to this run).
struct Managed {
    suffix: String,
    database: String,
    admin: String,
    service: String,
    owner: String,
    writer: String,
    /// Roles a test made besides the four, dropped at the end.
    extra: Vec<String>,
}

/// `host:port` of the tests' server, from its admin URL.
fn host_port() -> String {
    let base = &server().base_url;
    let rest = base
        .split_once("://")
        .map_or(base.as_str(), |(_, rest)| rest);
    rest.rsplit_once('@')
        .map_or(rest, |(_, host)| host)
        .to_owned()
}

fn url_as(user: &str, database: &str) -> String {
    format!("postgres://{user}:{PASSWORD}@{}/{database}", host_port())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting {url}: {e:?}"));
    tokio::spawn(connection);
    client
}

/// The SQLSTATE and message of a statement that must fail.
async fn refused(db: &tokio_postgres::Client, sql: &str) -> (SqlState, String) {
    match db.batch_execute(sql).await {
        Ok(()) => panic!("accepted: {sql}"),
        Err(error) => {
            let db_error = error
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: {error:?}"));
            (db_error.code().clone(), db_error.message().to_owned())
        }
    }
}

/// Runs a script of `sql/` with psql; false when there is no psql.
fn psql(url: &str, script: &str, vars: &[(&str, &str)]) -> bool {
    let mut command = Command::new("psql");
    command
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(format!("{}/sql/{script}", env!("CARGO_MANIFEST_DIR")));
    for (name, value) in vars {
        command.args(["-v", &format!("{name}={value}")]);
    }
    match command.output() {
        Ok(output) => {
            assert!(
                output.status.success(),
                "psql -f sql/{script}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            true
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => panic!("running psql: {error}"),
    }
}

/// `changecast migrate` with the role of `url`; what it logged.
fn migrate_as(url: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_changecast"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .output()
        .expect("running changecast migrate");
    let logged = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "changecast migrate: {logged}");
    logged
}

impl Managed {
    /// The provider's part (a superuser makes an admin role with CREATEROLE and CREATEDB,
    /// as RDS and Cloud SQL do), then sql/roles.sql as that admin and passwords for the
    /// roles it made. No migration yet.
    async fn roles() -> Managed {
        let suffix = format!(
            "{}_{}",
            std::process::id(),
            SETUPS.fetch_add(1, Ordering::SeqCst)
        );
        let managed = Managed {
            database: format!("cc_managed_{suffix}"),
            admin: format!("cc_admin_{suffix}"),
            service: format!("cc_service_{suffix}"),
            owner: format!("cc_owner_{suffix}"),
            writer: format!("cc_writer_{suffix}"),
            suffix,
            extra: Vec::new(),
        };
        let superuser = connect(&server().url("postgres")).await;
        superuser
            .batch_execute(&format!(
                "create role {} login createrole createdb password '{PASSWORD}'",
                managed.admin
            ))
            .await
            .unwrap();
        let admin_url = url_as(&managed.admin, "postgres");
        let admin = connect(&admin_url).await;
        let superuser_admin: bool = admin
            .query_one(
                "select rolsuper from pg_roles where rolname = current_user",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!superuser_admin);
        let vars = [
            ("database", managed.database.as_str()),
            ("changecast_role", managed.service.as_str()),
            ("owner_role", managed.owner.as_str()),
            ("writer_role", managed.writer.as_str()),
        ];
        if !psql(&admin_url, "roles.sql", &vars) {
            eprintln!("no psql: running the statements of sql/roles.sql one by one");
            admin
                .batch_execute(&format!(
                    "create role {service} login; create role {owner} login; create role {writer} login;
                     create database {database};
                     revoke all on database {database} from public;
                     grant connect, temporary on database {database} to {service}, {owner}, {writer};
                     grant create on database {database} to {service}, {owner};",
                    service = managed.service,
                    owner = managed.owner,
                    writer = managed.writer,
                    database = managed.database
                ))
                .await
                .unwrap();
            let in_database = connect(&url_as(&managed.admin, &managed.database)).await;
            in_database
                .batch_execute(&format!(
                    "do $$ begin
                         if current_setting('server_version_num')::int >= 150000 then
                             grant create on schema public to {}, {};
                         end if;
                     end $$",
                    managed.service, managed.owner
                ))
                .await
                .unwrap();
        }
        for role in [&managed.service, &managed.owner, &managed.writer] {
            admin
                .batch_execute(&format!("alter role {role} password '{PASSWORD}'"))
                .await
                .unwrap();
        }
        managed
    }

    /// [`Managed::roles`], then `changecast migrate` as the changecast role and
    /// sql/grants.sql as it.
    /// Then, as docs/roles.md says, the admin takes back the changecast role's CREATE on
    /// public (PostgreSQL 15+): everything after runs without it.
    async fn migrated() -> Managed {
        let managed = Managed::roles().await;
        migrate_as(&managed.url(&managed.service));
        managed.grants().await;
        connect(&url_as(&managed.admin, &managed.database))
            .await
            .batch_execute(&format!(
                "do $$ begin
                     if current_setting('server_version_num')::int >= 150000 then
                         revoke create on schema public from {};
                     end if;
                 end $$",
                managed.service
            ))
            .await
            .unwrap();
        managed
    }

    async fn grants(&self) {
        let vars = [
            ("watcher_role", self.owner.as_str()),
            ("app_role", self.writer.as_str()),
        ];
        if !psql(&self.url(&self.service), "grants.sql", &vars) {
            self.connect(&self.service)
                .await
                .batch_execute(&format!(
                    "grant usage on schema changecast to {owner}, {writer};
                     grant execute on function changecast.watch(regclass, text, text, text, text[]),
                                               changecast.unwatch(regclass), changecast.capture(),
                                               changecast.capture_truncate() to {owner};
                     grant execute on function changecast.publish(text, text, jsonb) to {writer};",
                    owner = self.owner,
                    writer = self.writer
                ))
                .await
                .unwrap();
        }
    }

    fn url(&self, role: &str) -> String {
        url_as(role, &self.database)
    }

    async fn connect(&self, role: &str) -> tokio_postgres::Client {
        connect(&self.url(role)).await
    }

    /// A login role made by the admin (with a password, allowed to connect to the
    /// database), dropped at the end.
    async fn extra_role(&mut self, what: &str) -> String {
        let name = format!("cc_{what}_{}", self.suffix);
        connect(&url_as(&self.admin, "postgres"))
            .await
            .batch_execute(&format!(
                "create role {name} login password '{PASSWORD}';
                 grant connect on database {} to {name};",
                self.database
            ))
            .await
            .unwrap();
        self.extra.push(name.clone());
        name
    }

    /// What the changecast role holds on `table`, by the table's ACL.
    async fn service_privileges(&self, table: &str) -> HashSet<String> {
        self.connect(&self.owner)
            .await
            .query(
                "select a.privilege_type from pg_class c, aclexplode(c.relacl) a
                 where c.oid = $1::text::regclass and a.grantee = $2::text::regrole",
                &[&table, &self.service],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Roles the changecast role is a member of, directly or not.
    async fn service_memberships(&self) -> Vec<String> {
        self.connect(&self.service)
            .await
            .query(
                "select r.rolname::text from pg_roles r
                 where r.rolname <> current_user and pg_has_role(current_user, r.oid, 'MEMBER')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Drops the database and the roles (best effort). As the tests' superuser: ending
    /// the other roles' sessions with the database is beyond the admin.
    async fn drop(self) {
        let superuser = connect(&server().url("postgres")).await;
        let _ = superuser
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                self.database
            ))
            .await;
        for role in [&self.service, &self.owner, &self.writer]
            .into_iter()
            .chain(&self.extra)
            .chain([&self.admin])
        {
            let _ = superuser
                .batch_execute(&format!("drop role if exists {role}"))
                .await;
        }
    }
}

/// The real service, as the changecast role, ready.
async fn serve(managed: &Managed) -> ServiceProcess {
    let service = ServiceProcess::start(&managed.url(&managed.service), "127.0.0.1:0");
    wait_for_status(
        &reqwest::Client::new(),
        &format!("http://{}/readyz", service.addr),
        200,
    )
    .await;
    service
}

async fn sse_of(service: &ServiceProcess, query: &str, tenant: &str) -> SseStream {
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/events?{query}", service.addr))
        .bearer_auth(token(tenant))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    SseStream::new(response)
}

async fn snapshot_of(service: &ServiceProcess, query: &str, tenant: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/snapshot?{query}", service.addr))
        .bearer_auth(token(tenant))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// (event, resource id) of each change.
fn kinds(events: &[SseEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.data["event"].as_str().unwrap_or_default().to_owned(),
                e.data["resource_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// The owner makes `public.orders` (with a secret column), lets the writer write it,
/// and watches it.
async fn owner_watches_orders(managed: &Managed) {
    managed
        .connect(&managed.owner)
        .await
        .batch_execute(&format!(
            "create table public.orders (id text primary key, tenant_id text not null,
                                         total int, card text);
             grant select, insert, update, delete, truncate on public.orders to {};
             select changecast.watch('public.orders', 'order', exclude_columns => array['card']);",
            managed.writer
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_managed_database_runs_changecast_without_a_superuser_or_memberships() {
    let managed = Managed::migrated().await;
    owner_watches_orders(&managed).await;

    // The changecast role: SELECT on the watched table and nothing else; a member of
    // nothing; no superuser.
    assert_eq!(
        managed.service_privileges("public.orders").await,
        HashSet::from(["SELECT".to_owned()])
    );
    assert_eq!(managed.service_memberships().await, Vec::<String>::new());
    let owner = managed.connect(&managed.owner).await;
    // From PostgreSQL 15 on the admin could take back its CREATE on public, and did; the
    // service is served below without it.
    let creates_in_public: bool = owner
        .query_one(
            "select has_schema_privilege($1, 'public', 'CREATE')
                    and current_setting('server_version_num')::int >= 150000",
            &[&managed.service],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!creates_in_public);
    let (table_owner, service_super): (String, bool) = owner
        .query_one(
            "select c.relowner::regrole::text, (select rolsuper from pg_roles where rolname = $1)
             from pg_class c where c.oid = 'public.orders'::regclass",
            &[&managed.service],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(table_owner, managed.owner);
    assert!(!service_super);
    let enabled: Vec<String> = owner
        .query(
            "select tgenabled::text from pg_trigger where tgrelid = 'public.orders'::regclass
             and tgname like 'changecast%' order by tgname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        enabled,
        ["R", "O", "O", "O", "A"],
        "the row trigger in replica mode, the statement triggers otherwise, TRUNCATE always"
    );

    let service = serve(&managed).await;
    let mut acme = sse_of(&service, "types=order", "acme").await;
    let writer = managed.connect(&managed.writer).await;
    writer
        .batch_execute(
            "insert into public.orders values ('o1', 'acme', 5, '4111-SECRET');
             insert into public.orders values ('o2', 'globex', 7, '4222-SECRET');
             update public.orders set total = 6 where id = 'o1';
             update public.orders set card = '4333-SECRET' where id = 'o1';
             delete from public.orders where id = 'o1';
             insert into public.orders values ('o3', 'acme', 9, '4444-SECRET');",
        )
        .await
        .unwrap();
    let events = next_events(&mut acme, 4).await;
    assert_eq!(
        kinds(&events),
        [
            ("created".into(), "o1".into()),
            ("updated".into(), "o1".into()),
            ("deleted".into(), "o1".into()),
            ("created".into(), "o3".into()),
        ]
    );
    assert_eq!(events[1].data["old"], json!({"total": 5}));
    let snapshot = snapshot_of(&service, "types=order", "acme").await;
    assert_eq!(
        snapshot["resources"]["order"],
        json!([{"id": "o3", "tenant_id": "acme", "total": 9}])
    );
    let seen = format!(
        "{:?} {snapshot}",
        events.iter().map(|e| &e.data).collect::<Vec<_>>()
    );
    assert!(!seen.contains("SECRET"), "{seen}");

    // TRUNCATE by the writer: the service's SELECT is enough to mark each tenant.
    writer
        .batch_execute("truncate public.orders")
        .await
        .unwrap();
    let resync = next_events(&mut acme, 1).await;
    assert_eq!(resync[0].data["reason"], "truncated", "{resync:?}");

    // The owner watches it again (the SELECT stays watch()'s to take back), then
    // unwatches: triggers gone, the SELECT taken back, writes not journalled.
    owner
        .batch_execute(
            "select changecast.watch('public.orders', 'order', exclude_columns => array['card'])",
        )
        .await
        .unwrap();
    let unwatched: bool = owner
        .query_one("select changecast.unwatch('public.orders')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unwatched);
    assert_eq!(
        managed.service_privileges("public.orders").await,
        HashSet::new()
    );
    let triggers: i64 = owner
        .query_one(
            "select count(*) from pg_trigger where tgrelid = 'public.orders'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    let journal = managed.connect(&managed.service).await;
    let journalled = || async {
        journal
            .query_one(
                "select count(*) from changecast.change_log where resource_type = 'order'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = journalled().await;
    writer
        .batch_execute("insert into public.orders values ('o4', 'acme', 1, null)")
        .await
        .unwrap();
    assert_eq!(journalled().await, before);
    let findings: i64 = journal
        .query_one("select count(*) from changecast.role_findings()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(findings, 0);

    // A SELECT the owner granted the changecast role for a reason of its own, before
    // watch(), is not unwatch()'s to take back.
    owner
        .batch_execute(&format!(
            "create table public.notes (id text primary key, tenant_id text not null);
             grant select on public.notes to {};
             select changecast.watch('public.notes', 'note');
             select changecast.unwatch('public.notes');",
            managed.service
        ))
        .await
        .unwrap();
    assert_eq!(
        managed.service_privileges("public.notes").await,
        HashSet::from(["SELECT".to_owned()])
    );

    drop(service);
    drop((owner, writer, journal));
    managed.drop().await;
}

/// Only the table's owner (or a role with its privileges, or a superuser) may watch or
/// unwatch it — as the role in effect: not a stranger granted watch() and even TRIGGER
/// and SELECT on it, not a session that SET ROLE to a non-owner, not a table owner's
/// security-definer code run by someone else, not a forged request.
#[tokio::test]
async fn only_the_owner_in_effect_may_watch_or_unwatch_a_table() {
    let mut managed = Managed::migrated().await;
    owner_watches_orders(&managed).await;
    let service_db = managed.connect(&managed.service).await;
    let stranger = managed.extra_role("stranger").await;
    service_db
        .batch_execute(&format!(
            "grant usage on schema changecast to {stranger};
             grant execute on function changecast.watch(regclass, text, text, text, text[]),
                                       changecast.unwatch(regclass) to {stranger};"
        ))
        .await
        .unwrap();
    // (From PostgreSQL 15 on only the database's owner, the admin, may let it create in
    // public; before, everyone may.)
    connect(&url_as(&managed.admin, &managed.database))
        .await
        .batch_execute(&format!("grant create on schema public to {stranger}"))
        .await
        .unwrap();
    let owner = managed.connect(&managed.owner).await;
    owner
        .batch_execute(&format!(
            "grant select, trigger on public.orders to {stranger}"
        ))
        .await
        .unwrap();
    let stranger_db = managed.connect(&stranger).await;
    for attempt in [
        "select changecast.watch('public.orders', 'order', exclude_columns => '{}')",
        "select changecast.unwatch('public.orders')",
    ] {
        let (code, message) = refused(&stranger_db, attempt).await;
        assert_eq!(
            code,
            SqlState::INSUFFICIENT_PRIVILEGE,
            "{attempt}: {message}"
        );
        assert!(
            message.contains(&format!("role \"{stranger}\" may not"))
                && message.contains(&managed.owner),
            "{message}"
        );
    }
    // Straight to the request table: its trigger asks the same of the role in effect,
    // which the request cannot name (nor read back what watch() granted).
    for attempt in [
        "insert into changecast.watch_requests (table_name, unwatch) values ('public.orders', true)".to_owned(),
        "insert into changecast.watch_requests (table_name, unwatch) values ('public.orders', true)
         returning to_revoke"
            .to_owned(),
        format!(
            "insert into changecast.watch_requests (table_name, unwatch, requested_by)
             values ('public.orders', true, '{}')",
            managed.owner
        ),
    ] {
        let (code, message) = refused(&stranger_db, &attempt).await;
        assert_eq!(
            code,
            SqlState::INSUFFICIENT_PRIVILEGE,
            "{attempt}: {message}"
        );
    }
    // The writer was granted nothing in changecast but publish().
    let writer = managed.connect(&managed.writer).await;
    for attempt in [
        "select changecast.watch('public.orders', 'order')",
        "insert into changecast.watch_requests (table_name, resource_type, tenant_column, id_column, exclude_columns)
             values ('public.orders', 'order', 'tenant_id', 'id', '{}')",
    ] {
        assert_eq!(
            refused(&writer, attempt).await.0,
            SqlState::INSUFFICIENT_PRIVILEGE,
            "{attempt}"
        );
    }

    // SET ROLE: a role that may act as the owner and as the writer watches as whichever
    // it is at the moment.
    let ops = managed.extra_role("ops").await;
    connect(&url_as(&managed.admin, "postgres"))
        .await
        .batch_execute(&format!(
            "grant {owner} to {ops}; grant {writer} to {ops};",
            owner = managed.owner,
            writer = managed.writer
        ))
        .await
        .unwrap();
    let ops_db = managed.connect(&ops).await;
    ops_db
        .batch_execute(&format!("set role {}", managed.writer))
        .await
        .unwrap();
    let (code, message) = refused(&ops_db, "select changecast.unwatch('public.orders')").await;
    assert_eq!(code, SqlState::INSUFFICIENT_PRIVILEGE, "{message}");
    ops_db
        .batch_execute(&format!(
            "reset role; set role {owner};
             select changecast.watch('public.orders', 'order', exclude_columns => array['card']);
             reset role;",
            owner = managed.owner
        ))
        .await
        .unwrap();

    // A security-definer trigger of the stranger's, fired by the owner's write, tries to
    // drop the exclusion of orders in the owner's name.
    stranger_db
        .batch_execute(
            "create table public.bait (id int);
             grant insert on public.bait to public;
             create function public.hijack() returns trigger language plpgsql security definer as $$
             begin
                 perform changecast.watch('public.orders', 'order', exclude_columns => '{}');
                 return null;
             end $$;
             create trigger hijack after insert on public.bait for each row execute function public.hijack();",
        )
        .await
        .unwrap();
    let (code, _) = refused(&owner, "insert into public.bait values (1)").await;
    assert_eq!(code, SqlState::INSUFFICIENT_PRIVILEGE);
    let excluded: Vec<String> = service_db
        .query_one(
            "select exclude_columns from changecast.watched where resource_type = 'order'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(excluded, ["card"]);
    let requests: i64 = service_db
        .query_one("select count(*) from changecast.watch_requests", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requests, 0, "a request was left behind");

    drop((service_db, owner, stranger_db, writer, ops_db));
    managed.drop().await;
}

/// A table owner's code — a cast to json and to text of its own enum type, a default,
/// a trigger of its own — runs as the writer or the owner, never as the changecast role
/// (which is no superuser here): not in the capture trigger, not in snapshots, not on
/// TRUNCATE. Each piece of it records `current_user` and tries to forge a journal row
/// (only the changecast role could).
#[tokio::test]
async fn a_table_owners_code_never_runs_as_the_changecast_role() {
    let managed = Managed::migrated().await;
    let owner = managed.connect(&managed.owner).await;
    owner
        .batch_execute(&format!(
            "create table public.calls (who text, what text);
             grant insert on public.calls to public;
             create function public.trap(what text) returns void language plpgsql as $$
             begin
                 insert into public.calls values (current_user, what);
                 begin
                     insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                     values ('acme', 'diary', 'created', 'forged', '{{}}');
                 exception when others then null;
                 end;
             end $$;
             create type public.mood as enum ('happy', 'sad');
             create function public.mood_json(public.mood) returns json language plpgsql as $$
             begin perform public.trap('cast to json'); return '\"cast\"'::json; end $$;
             create cast (public.mood as json) with function public.mood_json(public.mood);
             create function public.mood_text(public.mood) returns text language plpgsql as $$
             begin perform public.trap('cast to text'); return 'cast'; end $$;
             create cast (public.mood as text) with function public.mood_text(public.mood);
             create function public.stamp() returns text language plpgsql as $$
             begin perform public.trap('default'); return 'stamped'; end $$;
             create function public.own_trigger() returns trigger language plpgsql as $$
             begin perform public.trap('own trigger'); return null; end $$;
             create table public.diaries (id text primary key, tenant_id text not null,
                                          mood public.mood, moods public.mood[],
                                          stamp text default public.stamp());
             create trigger own after insert or update or delete on public.diaries
                 for each row execute function public.own_trigger();
             grant select, insert, update, delete, truncate on public.diaries to {writer};
             select changecast.watch('public.diaries', 'diary');",
            writer = managed.writer
        ))
        .await
        .unwrap();
    // The trap is armed: to_jsonb of the type runs the owner's cast.
    let armed: String = owner
        .query_one("select to_jsonb('happy'::public.mood)::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(armed, "\"cast\"");

    let service = serve(&managed).await;
    let mut acme = sse_of(&service, "types=diary", "acme").await;
    let writer = managed.connect(&managed.writer).await;
    writer
        .batch_execute(
            "insert into public.diaries (id, tenant_id, mood, moods) values ('d1', 'acme', 'happy', '{happy,sad}');
             update public.diaries set mood = 'sad' where id = 'd1';
             insert into public.diaries (id, tenant_id, mood) values ('d2', 'acme', 'happy');
             delete from public.diaries where id = 'd2';",
        )
        .await
        .unwrap();
    let events = next_events(&mut acme, 4).await;
    assert_eq!(
        events[0].data["resource"],
        json!({"id": "d1", "tenant_id": "acme", "mood": "happy", "moods": ["happy", "sad"],
               "stamp": "stamped"})
    );
    let snapshot = snapshot_of(&service, "types=diary&filter=mood=eq.sad", "acme").await;
    assert_eq!(snapshot["resources"]["diary"][0]["id"], "d1", "{snapshot}");
    writer
        .batch_execute("truncate public.diaries")
        .await
        .unwrap();
    let resync = next_events(&mut acme, 1).await;
    assert_eq!(resync[0].data["reason"], "truncated");

    let calls: HashSet<(String, String)> = owner
        .query("select distinct who, what from public.calls", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // The default and the owner's trigger did run (as the writer): the trap works.
    assert!(
        calls.contains(&(managed.writer.clone(), "own trigger".into())),
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|(who, _)| who != &managed.service),
        "the owner's code ran as the changecast role: {calls:?}"
    );
    let forged: i64 = managed
        .connect(&managed.service)
        .await
        .query_one(
            "select count(*) from changecast.change_log where resource_id = 'forged'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(forged, 0);

    drop(service);
    drop((owner, writer));
    managed.drop().await;
}

mod every_migration {
    refinery::embed_migrations!("migrations");
}

/// Migrates the database of `managed`, as its changecast role, up to `version`.
async fn migrate_to(managed: &Managed, version: i32) {
    let (mut client, connection) = tokio_postgres::connect(&managed.url(&managed.service), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("create schema if not exists changecast")
        .await
        .unwrap();
    every_migration::migrations::runner()
        .set_target(refinery::Target::Version(version))
        .set_migration_table_name("changecast.refinery_schema_history")
        .run_async(&mut client)
        .await
        .unwrap_or_else(|e| panic!("migrating to V{version}: {e:?}"));
}

/// The privileges granted on the journal (the table's, its columns'), as PostgreSQL
/// prints them.
async fn journal_acl(db: &tokio_postgres::Client) -> (Vec<String>, Option<Vec<String>>) {
    let row = db
        .query_one(
            "select relacl::text[],
                    (select array_agg(attname || ': ' || attacl::text order by attnum)
                     from pg_attribute where attrelid = c.oid and attacl is not null)
             from pg_class c where oid = 'changecast.change_log'::regclass",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Roles granted SELECT on the journal before it was partitioned (one on the whole
/// table, one on some columns) keep it on the partitioned journal once the migrations
/// after the conversion have run as the changecast role (no superuser), however often.
#[tokio::test]
async fn a_select_granted_on_the_journal_before_it_was_partitioned_is_kept() {
    let mut managed = Managed::roles().await;
    let inspector = managed.extra_role("inspector").await;
    let auditor = managed.extra_role("auditor").await;
    migrate_to(&managed, 14).await;
    let service = managed.connect(&managed.service).await;
    service
        .batch_execute(&format!(
            "grant usage on schema changecast to {inspector}, {auditor};
             grant select on changecast.change_log to {inspector};
             grant select (id, occurred_at) on changecast.change_log to {auditor};"
        ))
        .await
        .unwrap();
    migrate_to(&managed, 15).await;
    // The inspector's SELECT on the table, the auditor's on a granted column, on the
    // table, on a column not granted.
    let privileges = || async {
        let row = service
            .query_one(
                "select has_table_privilege($1, 'changecast.change_log', 'select'),
                        has_column_privilege($2, 'changecast.change_log', 'occurred_at', 'select'),
                        has_table_privilege($2, 'changecast.change_log', 'select'),
                        has_column_privilege($2, 'changecast.change_log', 'tenant_id', 'select')",
                &[&inspector, &auditor],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    let none: (bool, bool, bool, bool) = privileges().await;
    assert_eq!(
        none,
        (false, false, false, false),
        "the conversion left the grants on the partition"
    );

    migrate_as(&managed.url(&managed.service));
    let kept: (bool, bool, bool, bool) = privileges().await;
    assert_eq!(kept, (true, true, false, false));
    let inspected: i64 = managed
        .connect(&inspector)
        .await
        .query_one("select count(*) from changecast.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inspected, 0);
    let granted = journal_acl(&service).await;
    // Again, as the changecast role: nothing fails, nothing more is granted.
    service
        .batch_execute(include_str!("../../migrations/V17__journal_grants.sql"))
        .await
        .unwrap();
    assert_eq!(journal_acl(&service).await, granted);
    drop(service);
    managed.drop().await;
}

/// A database set up as the docs said before least privilege: the changecast role a
/// member of the owner's role, the owner's table watched through it. After the new
/// migrations the table keeps being captured; the service names the membership it no
/// longer needs; once it is revoked, live delivery, snapshots and unwatch() still work.
#[tokio::test]
async fn a_changecast_role_that_was_a_member_of_the_owners_role_can_let_it_go() {
    let managed = Managed::roles().await;
    let admin = connect(&url_as(&managed.admin, "postgres")).await;
    admin
        .batch_execute(&format!("grant {} to {}", managed.owner, managed.service))
        .await
        .unwrap();
    // The version before least privilege.
    migrate_to(&managed, 12).await;
    managed.grants().await;
    let owner = managed.connect(&managed.owner).await;
    owner_watches_orders(&managed).await;
    // A table in a schema of the owner's, which the changecast role reached through the
    // membership too.
    owner
        .batch_execute(&format!(
            "create schema app;
             grant usage on schema app to {writer};
             create table app.things (id text primary key, tenant_id text not null);
             grant select, insert, update, delete, truncate on app.things to {writer};
             select changecast.watch('app.things', 'thing');",
            writer = managed.writer
        ))
        .await
        .unwrap();
    let writer = managed.connect(&managed.writer).await;
    writer
        .batch_execute(
            "insert into public.orders values ('o1', 'acme', 1, 'SECRET');
             insert into app.things values ('t1', 'acme');",
        )
        .await
        .unwrap();

    let logged = migrate_as(&managed.url(&managed.service));
    assert_eq!(
        managed.service_privileges("public.orders").await,
        HashSet::from(["SELECT".to_owned()]),
        "the migration gives the changecast role its own SELECT"
    );
    let advice = format!("revoke {} from {}", managed.owner, managed.service);
    assert!(
        logged.contains("WARN") && logged.contains(&advice),
        "no warning about the membership: {logged}"
    );
    let service_db = managed.connect(&managed.service).await;
    let findings = || async {
        service_db
            .query("select changecast.role_findings()", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let named = findings().await;
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(
        named[0].contains(&format!(
            "revoke {} from {}",
            managed.owner, managed.service
        )) && named[0].contains("public.orders"),
        "{named:?}"
    );

    admin
        .batch_execute(&format!(
            "revoke {} from {}",
            managed.owner, managed.service
        ))
        .await
        .unwrap();
    assert_eq!(managed.service_memberships().await, Vec::<String>::new());
    assert_eq!(findings().await, Vec::<String>::new());

    let service = serve(&managed).await;
    let mut acme = sse_of(&service, "types=order", "acme").await;
    writer
        .batch_execute("insert into public.orders values ('o2', 'acme', 2, 'SECRET')")
        .await
        .unwrap();
    let events = next_events(&mut acme, 1).await;
    assert_eq!(kinds(&events), [("created".into(), "o2".into())]);
    let snapshot = snapshot_of(&service, "types=order", "acme").await;
    let ids: HashSet<&str> = snapshot["resources"]["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from(["o1", "o2"]));
    assert!(!snapshot.to_string().contains("SECRET"));
    // The migration granted USAGE on schema app too: snapshots and TRUNCATE of its table
    // work without the membership.
    let snapshot = snapshot_of(&service, "types=thing", "acme").await;
    assert_eq!(
        snapshot["resources"]["thing"],
        json!([{"id": "t1", "tenant_id": "acme"}])
    );
    let mut things = sse_of(&service, "types=thing", "acme").await;
    writer.batch_execute("truncate app.things").await.unwrap();
    let resync = next_events(&mut things, 1).await;
    assert_eq!(resync[0].data["reason"], "truncated", "{resync:?}");

    let unwatched: bool = owner
        .query_one("select changecast.unwatch('public.orders')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unwatched);
    assert_eq!(
        managed.service_privileges("public.orders").await,
        HashSet::new()
    );

    drop(service);
    drop((admin, owner, writer, service_db));
    managed.drop().await;
}

/// A partitioned table of the owner's: the changecast role attaches the triggers to it
/// and its partitions with TRIGGER lent for the call only, and holds SELECT on them
/// afterwards; writes through either partition are delivered, and a snapshot reads them
/// through the partitioned table. The owner can add a partition, whose writes are
/// delivered too; a TRUNCATE of one partition resyncs its tenants.
#[tokio::test]
async fn an_owners_partitioned_table_is_watched_with_trigger_lent_for_the_call_only() {
    let managed = Managed::migrated().await;
    let owner = managed.connect(&managed.owner).await;
    owner
        .batch_execute(&format!(
            "create table public.readings (id text, tenant_id text not null, value int,
                                           primary key (tenant_id, id)) partition by list (tenant_id);
             create table public.readings_acme partition of public.readings for values in ('acme');
             create table public.readings_rest partition of public.readings default;
             grant select, insert, update, delete on public.readings to {};
             select changecast.watch('public.readings', 'reading');",
            managed.writer
        ))
        .await
        .unwrap();
    for (table, expected) in [
        ("public.readings", HashSet::from(["SELECT".to_owned()])),
        ("public.readings_acme", HashSet::from(["SELECT".to_owned()])),
        ("public.readings_rest", HashSet::from(["SELECT".to_owned()])),
    ] {
        assert_eq!(managed.service_privileges(table).await, expected, "{table}");
    }
    let attached: i64 = owner
        .query_one(
            "select count(*) from pg_trigger
             where tgname = 'changecast_capture'
               and tgrelid in ('public.readings_acme'::regclass, 'public.readings_rest'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attached, 2, "each partition carries the capture trigger");

    let service = serve(&managed).await;
    let mut acme = sse_of(&service, "types=reading", "acme").await;
    let mut globex = sse_of(&service, "types=reading", "globex").await;
    let writer = managed.connect(&managed.writer).await;
    writer
        .batch_execute(
            "insert into public.readings values ('r1', 'acme', 1), ('r2', 'globex', 2);
             update public.readings set value = 3 where id = 'r1';",
        )
        .await
        .unwrap();
    assert_eq!(
        kinds(&next_events(&mut acme, 2).await),
        [
            ("created".into(), "r1".into()),
            ("updated".into(), "r1".into())
        ]
    );
    assert_eq!(
        kinds(&next_events(&mut globex, 1).await),
        [("created".into(), "r2".into())]
    );
    let snapshot = snapshot_of(&service, "types=reading", "acme").await;
    assert_eq!(
        snapshot["resources"]["reading"],
        json!([{"id": "r1", "tenant_id": "acme", "value": 3}])
    );

    // The owner adds a partition (cloning the capture trigger needs EXECUTE on capture(),
    // which sql/grants.sql gives it); writes into it are delivered.
    owner
        .batch_execute(
            "create table public.readings_initech partition of public.readings for values in ('initech')",
        )
        .await
        .unwrap();
    let mut initech = sse_of(&service, "types=reading", "initech").await;
    writer
        .batch_execute("insert into public.readings values ('r3', 'initech', 4)")
        .await
        .unwrap();
    assert_eq!(
        kinds(&next_events(&mut initech, 1).await),
        [("created".into(), "r3".into())]
    );
    // EXECUTE on capture() lets the owner attach it by hand, but a trigger with other
    // arguments, or on a table never watched, is refused on every row.
    owner
        .batch_execute(
            "create table public.fake (id text, tenant_id text, value int);
             create trigger fake after insert on public.fake
                 for each row execute function changecast.capture('reading', 'tenant_id', 'id');
             create trigger other after insert on public.readings_acme
                 for each row execute function changecast.capture('reading', 'id', 'tenant_id');",
        )
        .await
        .unwrap();
    for attempt in [
        "insert into public.fake values ('f1', 'acme', 1)",
        "insert into public.readings values ('f2', 'acme', 1)",
    ] {
        let (code, message) = refused(&owner, attempt).await;
        assert_eq!(
            code,
            SqlState::INSUFFICIENT_PRIVILEGE,
            "{attempt}: {message}"
        );
    }
    owner
        .batch_execute("drop trigger other on public.readings_acme")
        .await
        .unwrap();

    // TRUNCATE of one partition: its subscribers' tenants resync. Of the partitioned
    // table: one entry per tenant, though its trigger and each partition's fire.
    let journal = managed.connect(&managed.service).await;
    let truncations = || async {
        journal
            .query(
                "select tenant_id, count(*) from changecast.change_log
                 where resource_type = 'reading' and event = 'truncated' group by 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
            .collect::<HashSet<_>>()
    };
    // (Without its own SELECT on the partition, the changecast role reads it through the
    // partitioned table.)
    owner
        .batch_execute(&format!(
            "revoke select on public.readings_acme from {};
             truncate public.readings_acme;",
            managed.service
        ))
        .await
        .unwrap();
    let resync = next_events(&mut acme, 1).await;
    assert_eq!(resync[0].data["reason"], "truncated", "{resync:?}");
    assert_eq!(truncations().await, HashSet::from([("acme".into(), 1)]));
    writer
        .batch_execute("insert into public.readings values ('r4', 'acme', 5)")
        .await
        .unwrap();
    owner
        .batch_execute("truncate public.readings")
        .await
        .unwrap();
    assert_eq!(
        truncations().await,
        HashSet::from([
            ("acme".into(), 2),
            ("globex".into(), 1),
            ("initech".into(), 1)
        ])
    );

    drop(service);
    drop((owner, writer, journal));
    managed.drop().await;
}

/// The changecast role's findings, as it reads them.
async fn findings_of(managed: &Managed) -> Vec<String> {
    managed
        .connect(&managed.service)
        .await
        .query("select changecast.role_findings()", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// A table in a schema of the owner's: watch() first asks for USAGE on the schema for the
/// changecast role (naming the grant), then works once its owner grants it; writes,
/// snapshots and TRUNCATE work through it. Row security turned on for a watched table is
/// named by role_findings().
#[tokio::test]
async fn a_table_outside_public_needs_usage_on_its_schema_for_the_changecast_role() {
    let managed = Managed::migrated().await;
    let owner = managed.connect(&managed.owner).await;
    owner
        .batch_execute(&format!(
            "create schema app;
             grant usage on schema app to {writer};
             create table app.things (id text primary key, tenant_id text not null, name text);
             grant select, insert, update, delete, truncate on app.things to {writer};",
            writer = managed.writer
        ))
        .await
        .unwrap();
    let (code, message) = match owner
        .query_one("select changecast.watch('app.things', 'thing')", &[])
        .await
    {
        Ok(_) => panic!("watched without USAGE on its schema"),
        Err(error) => {
            let db_error = error.as_db_error().expect("a database error");
            (
                db_error.code().clone(),
                format!(
                    "{} {}",
                    db_error.message(),
                    db_error.hint().unwrap_or_default()
                ),
            )
        }
    };
    assert_eq!(code, SqlState::INSUFFICIENT_PRIVILEGE, "{message}");
    assert!(
        message.contains("USAGE on schema app")
            && message.contains(&format!("grant usage on schema app to {}", managed.service)),
        "{message}"
    );
    owner
        .batch_execute(&format!(
            "grant usage on schema app to {};
             select changecast.watch('app.things', 'thing');",
            managed.service
        ))
        .await
        .unwrap();
    assert_eq!(findings_of(&managed).await, Vec::<String>::new());

    let service = serve(&managed).await;
    let mut acme = sse_of(&service, "types=thing", "acme").await;
    let writer = managed.connect(&managed.writer).await;
    writer
        .batch_execute(
            "insert into app.things values ('t1', 'acme', 'one'), ('t2', 'globex', 'two');",
        )
        .await
        .unwrap();
    assert_eq!(
        kinds(&next_events(&mut acme, 1).await),
        [("created".into(), "t1".into())]
    );
    let snapshot = snapshot_of(&service, "types=thing", "acme").await;
    assert_eq!(
        snapshot["resources"]["thing"],
        json!([{"id": "t1", "tenant_id": "acme", "name": "one"}])
    );
    writer.batch_execute("truncate app.things").await.unwrap();
    let resync = next_events(&mut acme, 1).await;
    assert_eq!(resync[0].data["reason"], "truncated", "{resync:?}");

    // Row security on a watched table applies to the changecast role (no BYPASSRLS, not
    // the owner): named, with what to do.
    owner
        .batch_execute("alter table app.things enable row level security")
        .await
        .unwrap();
    let named = findings_of(&managed).await;
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(
        named[0].contains("app.things") && named[0].contains("row security"),
        "{named:?}"
    );

    drop(service);
    drop((owner, writer));
    managed.drop().await;
}
