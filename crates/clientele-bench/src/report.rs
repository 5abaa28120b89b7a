//! The results: a human-readable table, one JSON line per scenario, the hub's memory, and the
//! check against the throughput targets.

use serde_json::json;

use crate::load::Measured;
use clientele_bench::procfs::{self, CpuUse};

/// Most failed requests a scenario may have, as a fraction, before the run fails.
pub const MAX_ERROR_RATE: f64 = 0.001;

/// The targets on SQLite: `get_by_id` and `create` requests per second.
const TARGETS: [(&str, &str, f64); 2] = [
    ("sqlite", "get_by_id", 20_000.0),
    ("sqlite", "create", 5_000.0),
];

/// One scenario on one backend: the hub's figures beside the raw floor's.
pub struct Scenario {
    pub backend: &'static str,
    pub scenario: &'static str,
    pub concurrency: usize,
    pub hub: Measured,
    pub hub_cpu: CpuUse,
    pub raw: Measured,
    pub raw_cpu: CpuUse,
}

impl Scenario {
    /// Hub throughput as a fraction of the raw floor's.
    pub fn ratio(&self) -> f64 {
        self.hub.rate() / self.raw.rate().max(f64::EPSILON)
    }

    /// Whether either side failed more than [`MAX_ERROR_RATE`] of its operations.
    pub fn too_many_errors(&self) -> bool {
        self.hub.error_rate() > MAX_ERROR_RATE || self.raw.error_rate() > MAX_ERROR_RATE
    }

    /// The machine-readable line.
    pub fn json_line(&self) -> String {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "backend": self.backend,
            "scenario": self.scenario,
            "rps": round(self.hub.rate()),
            "p50_ms": self.hub.quantile_ms(0.5),
            "p99_ms": self.hub.quantile_ms(0.99),
            "p999_ms": self.hub.quantile_ms(0.999),
            "raw_rps": round(self.raw.rate()),
            "raw_p50_ms": self.raw.quantile_ms(0.5),
            "raw_p99_ms": self.raw.quantile_ms(0.99),
            "ratio": round(self.ratio()),
            "concurrency": self.concurrency,
            "requests": self.hub.ok,
            "errors": self.hub.failed,
            "raw_errors": self.raw.failed,
            "hub_cpu_cores": round(self.hub_cpu.hub),
            "client_cpu_cores": round(self.hub_cpu.bench),
            "machine_cpu_cores": round(self.hub_cpu.machine),
            "cpu_stall": round(self.hub_cpu.cpu_stall),
            "io_stall": round(self.hub_cpu.io_stall),
        })
        .to_string()
    }
}

/// A variant measurement that is not one of the scenarios: a raw-floor change the hub does not
/// make (yet), or a hub request that isolates part of the request path.
pub struct WhatIf {
    pub name: &'static str,
    pub measured: Measured,
    /// Customers per operation (inserts in one transaction).
    pub rows_per_op: u64,
}

/// What else a backend's run measured.
pub struct BackendExtras {
    pub backend: &'static str,
    /// The hub's database pool size (and the raw floor's).
    pub db_connections: u32,
    pub peak_rss_kib: u64,
    pub hub_doc_bytes: usize,
    pub raw_doc_bytes: usize,
    pub seed_per_second: f64,
    pub load_average_before: String,
    pub what_ifs: Vec<WhatIf>,
}

/// Prints everything to stdout.
pub fn print(scenarios: &[Scenario], extras: &[BackendExtras], idle_machine_cores: f64) {
    print_throughput(scenarios);
    print_cpu(scenarios);
    println!();
    for line in scenarios.iter().map(Scenario::json_line) {
        println!("{line}");
    }
    println!();
    print_extras(extras, idle_machine_cores);
    println!();
    print_what_ifs(extras);
    print_targets(scenarios);
}

fn print_throughput(scenarios: &[Scenario]) {
    println!(
        "{:<9} {:<10} {:>5} | {:>10} {:>8} {:>8} {:>8} {:>7} | {:>10} {:>8} {:>8} | {:>7}",
        "backend",
        "scenario",
        "conc",
        "hub req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "raw ops/s",
        "p50 ms",
        "p99 ms",
        "hub/raw"
    );
    for s in scenarios {
        println!(
            "{:<9} {:<10} {:>5} | {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7} | {:>10.0} {:>8.2} {:>8.2} | {:>7.2}",
            s.backend,
            s.scenario,
            s.concurrency,
            s.hub.rate(),
            s.hub.quantile_ms(0.5),
            s.hub.quantile_ms(0.99),
            s.hub.quantile_ms(0.999),
            s.hub.failed,
            s.raw.rate(),
            s.raw.quantile_ms(0.5),
            s.raw.quantile_ms(0.99),
            s.ratio(),
        );
    }
}

fn print_cpu(scenarios: &[Scenario]) {
    println!();
    println!(
        "CPU during the measured window, in cores (this machine has {}):",
        procfs::machine_cores()
    );
    println!(
        "{:<9} {:<10} | {:>6} {:>6} {:>7} {:>6} {:>6} | {:>6} {:>7} {:>6} {:>6}",
        "backend",
        "scenario",
        "hub",
        "client",
        "machine",
        "cpu%",
        "io%",
        "raw",
        "machine",
        "cpu%",
        "io%"
    );
    let pct = |share: f64| share * 100.0;
    for s in scenarios {
        let (h, r) = (&s.hub_cpu, &s.raw_cpu);
        println!(
            "{:<9} {:<10} | {:>6.2} {:>6.2} {:>7.2} {:>6.0} {:>6.0} | {:>6.2} {:>7.2} {:>6.0} {:>6.0}",
            s.backend,
            s.scenario,
            h.hub,
            h.bench,
            h.machine,
            pct(h.cpu_stall),
            pct(h.io_stall),
            r.bench,
            r.machine,
            pct(r.cpu_stall),
            pct(r.io_stall),
        );
    }
    println!(
        "(hub: the server process; client: this load generator; raw: this process running the \
         raw queries; machine: everything, including PostgreSQL and other users; cpu% and io%: \
         share of the window in which some task waited for a CPU or for I/O, /proc/pressure)"
    );
}

fn print_extras(extras: &[BackendExtras], idle_machine_cores: f64) {
    println!("machine busy before the run (2 s sample): {idle_machine_cores:.2} cores");
    for e in extras {
        println!(
            "{}: hub peak RSS (VmHWM) {:.1} MiB; database pools of {} connections; mean document \
             {} bytes via the hub, {} bytes in the raw rows; seeding {:.0} creates/s; load \
             average before: {}",
            e.backend,
            e.peak_rss_kib as f64 / 1024.0,
            e.db_connections,
            e.hub_doc_bytes,
            e.raw_doc_bytes,
            e.seed_per_second,
            e.load_average_before,
        );
    }
}

fn print_what_ifs(extras: &[BackendExtras]) {
    for e in extras.iter().filter(|e| !e.what_ifs.is_empty()) {
        println!("{} what-ifs and diagnostics:", e.backend);
        for w in &e.what_ifs {
            println!(
                "  {:<56} {:>9.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                w.name,
                w.measured.rate() * w.rows_per_op as f64,
                w.measured.quantile_ms(0.5),
                w.measured.quantile_ms(0.99),
                w.measured.failed,
            );
        }
        println!();
    }
}

fn print_targets(scenarios: &[Scenario]) {
    for (backend, scenario, target) in TARGETS {
        let measured = scenarios
            .iter()
            .find(|s| s.backend == backend && s.scenario == scenario);
        match measured {
            Some(s) => {
                let rate = s.hub.rate();
                let verdict = if rate >= target { "PASS" } else { "FAIL" };
                println!("target {backend} {scenario} >= {target:.0}/s: {verdict} ({rate:.0}/s)");
            }
            None => println!("target {backend} {scenario} >= {target:.0}/s: not measured"),
        }
    }
}
