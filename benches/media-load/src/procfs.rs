//! CPU time and memory of a process, from /proc (Linux; `None` elsewhere or when unreadable).

/// Kernel clock ticks per second for /proc/<pid>/stat times (`_SC_CLK_TCK`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of `pid` ("self" for this process), in seconds.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; fields resume after the last ')'.
    let (_, after_comm) = text.rsplit_once(')')?;
    // After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime(14) stime(15).
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / TICKS_PER_SEC)
}

/// CPU seconds the whole machine spent busy (every core; not idle, waiting for I/O or stolen).
pub fn machine_busy_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = text.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq (then steal, time the hypervisor took, not ours;
    // guest time is counted within user).
    let ticks: Vec<u64> = cpu
        .split_ascii_whitespace()
        .take(7)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<u64>() - idle) as f64 / TICKS_PER_SEC)
}

/// (resident, peak resident) of `pid` in MiB.
pub fn rss_mib(pid: &str) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .split_ascii_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    };
    let rss = kib("VmRSS:")?;
    Some((rss / 1024.0, kib("VmHWM:").unwrap_or(rss) / 1024.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        if cfg!(target_os = "linux") {
            assert!(super::cpu_secs("self").is_some());
            assert!(super::machine_busy_secs().is_some());
            let (rss, peak) = super::rss_mib("self").unwrap();
            assert!(rss > 0.0 && peak >= rss);
        }
    }
}
