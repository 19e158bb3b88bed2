//! tracer's own cost, as the standard process metrics: the names, types and help texts the
//! Prometheus client libraries' process collectors give them (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, ...), so that the dashboards and alerts written for any
//! exporter work for tracer. Read from `/proc/self` (through `procfs`) at each scrape: `stat`,
//! the number of entries in `fd`, and `limits`; the boot time from `/proc/stat` once per thread.
//!
//! A figure that cannot be read is left out of the exposition, not exported as zero: a zero
//! would read as a real value (a counter reset to `rate()`, a process without memory), whereas
//! a missing series shows as no data and fires `absent()` alerts. Each file is read on its own,
//! so that one that fails (`limits`, say) does not hide the others.

use procfs::process::{LimitValue, Process};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// Encodes the process metrics of the calling process, those it can read.
pub(super) fn encode(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Ok(process) = Process::myself() else {
        return Ok(());
    };
    if let Ok(stat) = process.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        counter(
            encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            (stat.utime + stat.stime) as f64 / ticks,
        )?;
        gauge(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            (stat.rss * procfs::page_size()) as f64,
        )?;
        gauge(
            encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stat.vsize as f64,
        )?;
        gauge(
            encoder,
            "process_threads",
            "Number of OS threads in the process.",
            stat.num_threads as f64,
        )?;
        // The start time is in clock ticks since boot (proc_pid_stat(5)).
        if let Ok(boot) = procfs::boot_time_secs() {
            gauge(
                encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.starttime as f64 / ticks,
            )?;
        }
    }
    if let Ok(open) = process.fd_count() {
        gauge(
            encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            open as f64,
        )?;
    }
    // Never unlimited on Linux: setrlimit(2) caps RLIMIT_NOFILE at fs.nr_open (kernel/sys.c).
    if let Ok(limits) = process.limits()
        && let LimitValue::Value(max) = limits.max_open_files.soft_limit
    {
        gauge(
            encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max as f64,
        )?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}
