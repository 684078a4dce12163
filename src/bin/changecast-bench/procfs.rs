//! CPU and memory of processes, read from `/proc`; the machine's description; the
//! file-descriptor limit. Linux only, like the rest of the deployment.

use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User plus system CPU time of `pid` ("self" for this process), in clock ticks.
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A `kB` line of `/proc/<pid>/status` or `smaps_rollup`, in bytes.
fn kb_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident set size in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Peak resident set size in bytes since the process started (`VmHWM`).
pub fn peak_rss(pid: u32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// The three load averages (1, 5, 15 minutes) as `/proc/loadavg` gives them.
pub fn load_averages() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Proportional set size in bytes: shared memory (PostgreSQL's shared buffers) counted
/// once across the processes that share it, so a sum over processes means something.
pub fn pss(pid: u32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// CPU time of a set of processes between two moments.
pub struct CpuWindow {
    started: Instant,
    ticks: HashMap<u32, u64>,
}

impl CpuWindow {
    pub fn start(pids: &[u32]) -> Self {
        CpuWindow {
            started: Instant::now(),
            ticks: pids
                .iter()
                .filter_map(|pid| Some((*pid, cpu_ticks(&pid.to_string())?)))
                .collect(),
        }
    }

    /// Cores used on average since `start` by `pids` (processes that appeared in between
    /// count from their start; those that ended are lost).
    pub fn cores(&self, pids: &[u32]) -> f64 {
        let now: HashMap<u32, u64> = pids
            .iter()
            .filter_map(|pid| Some((*pid, cpu_ticks(&pid.to_string())?)))
            .collect();
        self.cores_from(&now)
    }

    /// Cores used on average since `start` by the processes in `latest`, each with its
    /// CPU time as last read (a process that ended in between counts up to that reading;
    /// one that appeared counts from its start).
    pub fn cores_from(&self, latest: &HashMap<u32, u64>) -> f64 {
        let used: u64 = latest
            .iter()
            .map(|(pid, now)| now.saturating_sub(self.ticks.get(pid).copied().unwrap_or(0)))
            .sum();
        used as f64 / ticks_per_second() / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Busy and total CPU time of the whole machine, in clock ticks (`/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Cores busy on the whole machine over a window, whoever used them.
pub struct MachineCpu {
    started: Instant,
    busy: u64,
}

impl MachineCpu {
    pub fn start() -> Self {
        MachineCpu {
            started: Instant::now(),
            busy: machine_ticks().map_or(0, |(busy, _)| busy),
        }
    }

    pub fn cores(&self) -> f64 {
        let busy = machine_ticks().map_or(0, |(busy, _)| busy);
        busy.saturating_sub(self.busy) as f64
            / ticks_per_second()
            / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// This process's CPU over a window, in cores.
pub struct SelfCpu {
    started: Instant,
    ticks: u64,
}

impl SelfCpu {
    pub fn start() -> Self {
        SelfCpu {
            started: Instant::now(),
            ticks: cpu_ticks("self").unwrap_or(0),
        }
    }

    pub fn cores(&self) -> f64 {
        let used = cpu_ticks("self").unwrap_or(0).saturating_sub(self.ticks);
        used as f64 / ticks_per_second() / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// "2 cores, Intel(R) Xeon(R) ..." for the report header.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = kb_field("/proc/meminfo", "MemTotal:").map_or(String::new(), |bytes| {
        format!(", {:.1} GiB RAM", bytes as f64 / (1u64 << 30) as f64)
    });
    format!("{cores} cores, {model}{memory}")
}

/// Load average of the last minute, to flag runs disturbed by other work.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(cpu_ticks("self").is_some());
        let me = std::process::id();
        assert!(rss(me).unwrap() > 0);
        assert!(parent_pid(me).is_some());
    }
}
