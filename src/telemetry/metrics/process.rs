//! The standard process metrics (as Prometheus' client libraries name them), read
//! from `/proc` at scrape time (Linux; elsewhere they stay 0).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(super) struct Process {
    resident: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, AtomicU64>,
    cpu: Counter<f64, AtomicU64>,
    /// CPU seconds already counted, so a scrape adds only what is new.
    cpu_counted: std::sync::Mutex<f64>,
}

impl Process {
    pub(super) fn register(registry: &mut Registry) -> Process {
        let p = Process {
            resident: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
            cpu: Counter::default(),
            cpu_counted: std::sync::Mutex::new(0.0),
        };
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            p.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            p.start_time.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent, in seconds",
            p.cpu.clone(),
        );
        p
    }

    /// Reads the process metrics now.
    pub(super) fn sample(&self) {
        let p = self;
        if let Some(status) = read("/proc/self/status") {
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            if let Some(kib) = rss_kib {
                p.resident.set(kib * 1024);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Less the one this read holds open.
            p.open_fds.set(dir.count().saturating_sub(1) as i64);
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            p.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
        if let Some((cpu, start)) = read("/proc/self/stat").and_then(|s| cpu_and_start(&s)) {
            let mut counted = p
                .cpu_counted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cpu > *counted {
                p.cpu.inc_by(cpu - *counted);
                *counted = cpu;
            }
            if let Some(boot) = read("/proc/stat").and_then(|s| boot_time(&s)) {
                p.start_time.set(boot + start);
            }
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`).
fn ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) and seconds from boot to start, from `/proc/self/stat`.
fn cpu_and_start(stat: &str) -> Option<(f64, f64)> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is field 14, stime 15, starttime 22.
    let num = |i: usize| fields.get(i)?.parse::<f64>().ok();
    let t = ticks();
    Some(((num(11)? + num(12)?) / t, num(19)? / t))
}

/// Boot time (Unix seconds), from `/proc/stat`.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}
