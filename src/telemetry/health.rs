//! Gauges read when `/metrics` is scraped, so that alerts can set use against its ceiling:
//! whether the relay is ready, its connection limit, and the descriptors it holds against
//! the most it may.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The gauges.
pub struct HealthGauges {
    ready: Gauge,
    max_connections: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
}

impl HealthGauges {
    /// The gauges, registered in `registry`.
    pub fn registered(registry: &mut Registry) -> HealthGauges {
        let gauges = HealthGauges {
            ready: Gauge::default(),
            max_connections: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
        };
        registry.register(
            "ready",
            "1 while /readyz answers 200 (listening, rules loaded, not shutting down), else 0",
            gauges.ready.clone(),
        );
        registry.register(
            "max_connections",
            "The max_connections limit in force",
            gauges.max_connections.clone(),
        );
        registry.register(
            "open_fds",
            "File descriptors the process holds",
            gauges.open_fds.clone(),
        );
        registry.register(
            "max_fds",
            "The most file descriptors the process may hold (its soft RLIMIT_NOFILE)",
            gauges.max_fds.clone(),
        );
        gauges
    }

    /// Reads them now.
    pub fn update(&self, ready: bool, max_connections: usize) {
        self.ready.set(i64::from(ready));
        self.max_connections.set(max_connections as i64);
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| open_files(&limits))
        {
            self.max_fds.set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
    }
}

/// The soft limit on open files from the text of `/proc/PID/limits`. Pure.
pub fn open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         8388608              8388608              bytes\nMax open files            1024                 524288               files\n";
        assert_eq!(open_files(limits), Some(1024));
        assert_eq!(
            open_files("Max open files            unlimited            unlimited            files"),
            Some(u64::MAX)
        );
        assert_eq!(open_files("nothing here"), None);
    }
}
