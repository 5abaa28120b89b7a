//! Figures from `/proc`: CPU time of a process and of the whole machine (to see who used the two
//! cores during a run, including other people's work on a shared machine), a process's peak
//! resident memory, the load average, and what the machine read from its disks.

use std::time::Instant;

use anyhow::Context;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) a process has used so far.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; the fields after it are space-separated.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("parsing {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14 and stime 15.
    let ticks = |index: usize| -> anyhow::Result<f64> {
        let field = fields
            .get(index - 3)
            .with_context(|| format!("{path} is too short"))?;
        Ok(field
            .parse::<u64>()
            .with_context(|| format!("parsing {path}"))? as f64)
    };
    Ok((ticks(14)? + ticks(15)?) / TICKS_PER_SECOND)
}

/// Busy and total CPU time of the whole machine, in ticks (summed over its cores), from the
/// first line of `/proc/stat`, and the number of cores it lists.
fn machine_ticks() -> anyhow::Result<(u64, u64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cores = stat
        .lines()
        .filter(|line| {
            line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
        })
        .count();
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let values = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing /proc/stat")?;
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total, cores.max(1)))
}

/// The number of cores `/proc/stat` lists (the machine's, whatever this process's affinity).
pub fn machine_cores() -> usize {
    machine_ticks().map_or(1, |(_, _, cores)| cores)
}

/// Peak resident set size (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .with_context(|| format!("no VmHWM in {path}"))?;
    line.split_whitespace()
        .nth(1)
        .context("VmHWM has no value")?
        .parse()
        .context("parsing VmHWM")
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` writes them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Microseconds for which some task waited for a resource (`/proc/pressure/<resource>`, the
/// `some total=` figure); zero where the kernel does not report pressure.
fn stalled_micros(resource: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/pressure/{resource}"))
        .ok()
        .and_then(|text| {
            let some = text.lines().find(|line| line.starts_with("some"))?;
            some.split_whitespace()
                .find_map(|field| field.strip_prefix("total="))?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// CPU used during a window, in cores (1.0 = one core busy the whole time), and how much of the
/// window some task was stalled waiting for CPU or for I/O.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// The hub server process (zero when no hub ran).
    pub hub: f64,
    /// This benchmark process: the load client, or the raw floor's database work on SQLite.
    pub bench: f64,
    /// The whole machine: the above plus PostgreSQL and anything else running.
    pub machine: f64,
    /// Share of the window (0..1) in which some runnable task waited for a CPU.
    pub cpu_stall: f64,
    /// Share of the window (0..1) in which some task waited for I/O.
    pub io_stall: f64,
}

/// A CPU reading at the start of a window; [`CpuWindow::finish`] gives the use since then.
pub struct CpuWindow {
    at: Instant,
    hub_pid: Option<u32>,
    hub: f64,
    bench: f64,
    machine_busy: u64,
    machine_total: u64,
    cpu_stalled: u64,
    io_stalled: u64,
}

impl CpuWindow {
    pub fn start(hub_pid: Option<u32>) -> anyhow::Result<Self> {
        let (machine_busy, machine_total, _) = machine_ticks()?;
        Ok(Self {
            at: Instant::now(),
            hub_pid,
            hub: hub_pid.map(process_cpu_seconds).transpose()?.unwrap_or(0.0),
            bench: process_cpu_seconds(std::process::id())?,
            machine_busy,
            machine_total,
            cpu_stalled: stalled_micros("cpu"),
            io_stalled: stalled_micros("io"),
        })
    }

    pub fn finish(&self) -> anyhow::Result<CpuUse> {
        let seconds = self.at.elapsed().as_secs_f64().max(f64::EPSILON);
        let hub = match self.hub_pid {
            Some(pid) => process_cpu_seconds(pid)? - self.hub,
            None => 0.0,
        };
        let bench = process_cpu_seconds(std::process::id())? - self.bench;
        let (busy, total, cores) = machine_ticks()?;
        let busy_share = busy.saturating_sub(self.machine_busy) as f64
            / total.saturating_sub(self.machine_total).max(1) as f64;
        Ok(CpuUse {
            hub: hub / seconds,
            bench: bench / seconds,
            machine: busy_share * cores as f64,
            cpu_stall: stalled_micros("cpu").saturating_sub(self.cpu_stalled) as f64
                / 1e6
                / seconds,
            io_stall: stalled_micros("io").saturating_sub(self.io_stalled) as f64 / 1e6 / seconds,
        })
    }
}

/// KiB the whole machine has read from block devices since it booted (`pgpgin` in
/// `/proc/vmstat`). With the database in the page cache a query reads nothing from disk; a
/// host that drops cold page cache (some VMs reclaim it on their own) makes it read again.
pub fn disk_read_kib() -> anyhow::Result<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").context("reading /proc/vmstat")?;
    vmstat
        .lines()
        .find_map(|line| line.strip_prefix("pgpgin "))
        .context("no pgpgin in /proc/vmstat")?
        .trim()
        .parse()
        .context("parsing pgpgin")
}
