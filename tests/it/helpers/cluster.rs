//! A PostgreSQL cluster of the test's own, to restart, crash or restore.

use std::os::unix::fs::PermissionsExt as _;

use changecast::db::embedded::{Embedded, Options, StopMode};
use tokio_postgres::NoTls;

pub struct OwnCluster {
    server: Option<Embedded>,
    options: Options,
    pub dir: tempfile::TempDir,
}

impl OwnCluster {
    /// initdb + start in a temp folder. Durable commits (a crash must not lose what was
    /// acknowledged), no fsync (the machine does not crash, only PostgreSQL).
    pub async fn start() -> OwnCluster {
        Self::start_with(&[("fsync", "off"), ("full_page_writes", "off")]).await
    }

    /// With commits flushed to disk (`fsync`), as a production database: what the NOTIFY
    /// commit lock costs depends on it.
    pub async fn durable() -> OwnCluster {
        Self::start_with(&[("full_page_writes", "off")]).await
    }

    async fn start_with(settings: &[(&str, &str)]) -> OwnCluster {
        let dir = tempfile::Builder::new()
            .prefix("changecast-faults-")
            .tempdir()
            .unwrap();
        // As root the server runs as `postgres`, which must reach the data folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut options = Options::new(dir.path().join("data"));
        options.settings = settings
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let server = start_server(options.clone()).await;
        let options = server.restart_options(&options);
        OwnCluster {
            server: Some(server),
            options,
            dir,
        }
    }

    pub fn url(&self, database: &str) -> String {
        let server = self.server.as_ref().expect("the cluster is running");
        format!("{}/{database}", server.base_url())
    }

    pub async fn create_database(&self, name: &str) -> String {
        let (admin, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .unwrap();
        self.url(name)
    }

    /// `pg_ctl stop -m <mode>`, waited for.
    pub async fn stop(&mut self, mode: StopMode) {
        let server = self.server.take().expect("the cluster is running");
        tokio::task::spawn_blocking(move || server.stop_with(mode))
            .await
            .unwrap();
    }

    /// Starts it again on the same folder and port.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "the cluster is running");
        self.server = Some(start_server(self.options.clone()).await);
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// How it is started: folder, settings, port.
    pub fn options(&self) -> &Options {
        &self.options
    }
}

pub async fn start_server(options: Options) -> Embedded {
    tokio::task::spawn_blocking(move || Embedded::start(&options))
        .await
        .unwrap()
        .expect("starting a PostgreSQL cluster of the test's own")
}
