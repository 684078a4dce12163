//! The Node LISTEN -> SSE bridge of benches/node-bridge as a child process: what
//! `live` compares changecast with. Found, started (its port read from its stdout) and
//! stopped here; whether it can run is said in words, with how to install it.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// Longest wait for the bridge to print its port.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// benches/node-bridge of the source tree this bench was built from.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/node-bridge")
}

/// Why the bridge in `dir` cannot run, with what to do about it; `None` when it can.
pub fn unavailable(dir: &Path) -> Option<String> {
    if !dir.join("bridge.js").is_file() {
        return Some(format!(
            "no bridge at {} (pass --node-bridge-dir)",
            dir.join("bridge.js").display()
        ));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|status| status.success()) {
        return Some("`node` is not on PATH: install Node.js 18 or newer".into());
    }
    if !dir.join("node_modules/pg").is_dir() {
        return Some(format!(
            "its dependencies are not installed: run `npm ci` in {}",
            dir.display()
        ));
    }
    None
}

/// A running bridge.
pub struct NodeBridge {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl NodeBridge {
    /// Starts `node bridge.js` on `channel`; returns once it listens.
    pub async fn start(
        dir: &Path,
        database_url: &str,
        channel: &str,
    ) -> anyhow::Result<NodeBridge> {
        let mut command = Command::new("node");
        command
            .arg("bridge.js")
            .current_dir(dir)
            .env("DATABASE_URL", database_url)
            .env("BRIDGE_CHANNEL", channel)
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its errors are the bench's: a bridge that fails says why on the terminal.
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe. The bridge goes when the bench goes.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting node bridge.js")?;
        let stdout = child.stdout.take().expect("BUG: stdout is piped");
        let first_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        });
        let port = match tokio::time::timeout(START_TIMEOUT, first_line).await {
            Ok(Ok(Ok(line))) => line.trim().parse::<u16>().ok(),
            _ => None,
        };
        let pid = child.id();
        let mut bridge = NodeBridge {
            addr: ([127, 0, 0, 1], 0).into(),
            pid,
            child,
        };
        let Some(port) = port else {
            bridge.stop();
            bail!("the Node bridge did not print its port within {START_TIMEOUT:?}");
        };
        bridge.addr.set_port(port);
        Ok(bridge)
    }

    /// Kills it (it keeps nothing worth a graceful end).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeBridge {
    fn drop(&mut self) {
        self.stop();
    }
}
