//! The real `changecast serve` as a child process, and what `/proc` tells of a process.

use std::process::{Child, Command, Stdio};

use crate::helpers::{SECRET, WAIT};

/// The real `changecast serve`, as a child process.
pub struct ServiceProcess {
    pub child: Child,
    pub addr: String,
}

impl ServiceProcess {
    /// Starts `serve` on `db_url`, listening on `listen`; returns once it listens.
    pub fn start(db_url: &str, listen: &str) -> ServiceProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_changecast"))
            .args(["serve", "--listen", listen])
            .env("DATABASE_URL", db_url)
            .env("CHANGECAST_JWT_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("starting changecast");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("changecast listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("changecast did not listen: {:?}", child.try_wait()));
        ServiceProcess { child, addr }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A memory figure of a process from `/proc/<pid>/status` (e.g. `VmHWM`, the peak
/// resident memory), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}
