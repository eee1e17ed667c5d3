//! CPU time and memory of the processes under test, from /proc.

/// Clock ticks per second for /proc/*/stat (USER_HZ; 100 on Linux).
const HZ: f64 = 100.0;

/// Total user+system CPU seconds of every process whose pid is in `pids` or whose command
/// name is in `names` (Postfix and Haraka are several processes).
pub fn cpu_seconds(pids: &[u32], names: &[String]) -> f64 {
    let (user, system) = cpu_split(pids, names);
    user + system
}

/// [`cpu_seconds`] as user and system CPU seconds.
pub fn cpu_split(pids: &[u32], names: &[String]) -> (f64, f64) {
    let (mut user, mut system) = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else { return (0.0, 0.0) };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // comm is in parentheses and may hold spaces: split after the last ')'.
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[l + 1..r];
        if !pids.contains(&pid) && !names.iter().any(|n| n == comm) {
            continue;
        }
        let f: Vec<&str> = stat[r + 2..].split(' ').collect();
        // After comm: state(0) ppid(1) … utime(11) stime(12).
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / HZ;
        user += ticks(11);
        system += ticks(12);
    }
    (user, system)
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
