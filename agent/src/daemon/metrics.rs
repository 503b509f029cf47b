//! Host metrics for the heartbeat: CPU, memory, the work dir's disk, and
//! the agent's own resident memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sysinfo::{Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tasuki_protocol::HostMetrics;

/// How long a sample is reused. Polls come back-to-back while sessions
/// start and end, and sampling (every mount's disk space among it) would
/// otherwise sit between a lease arriving and its session starting.
const FRESH_FOR: Duration = Duration::from_secs(5);

pub struct Sampler {
    system: System,
    disks: Disks,
    pid: Option<Pid>,
    work_dir: PathBuf,
    last: Option<(Instant, HostMetrics)>,
}

impl Sampler {
    pub fn new(work_dir: &Path) -> Option<Sampler> {
        Some(Sampler {
            system: System::new().ok()?,
            disks: Disks::new_with_refreshed_list().ok()?,
            pid: sysinfo::get_current_pid().ok(),
            work_dir: work_dir.to_path_buf(),
            last: None,
        })
    }

    /// The metrics for a heartbeat: a fresh sample, or the last one when it
    /// is recent.
    pub fn metrics(&mut self) -> HostMetrics {
        if let Some((at, m)) = &self.last
            && at.elapsed() < FRESH_FOR
        {
            return m.clone();
        }
        let m = self.sample();
        self.last = Some((Instant::now(), m.clone()));
        m
    }

    /// CPU use is measured between two samples, so the first one reads 0.
    fn sample(&mut self) -> HostMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let mut rss = 0;
        if let Some(pid) = self.pid {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_memory(),
            );
            rss = self.system.process(pid).map_or(0, |p| p.memory());
        }
        self.disks.refresh(true);
        // The disk holding the work dir: the longest mount point above it.
        let dir = std::fs::canonicalize(&self.work_dir).unwrap_or_else(|_| self.work_dir.clone());
        let disk = self
            .disks
            .iter()
            .filter(|d| dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        HostMetrics {
            cpu_percent: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            disk_free_bytes: disk.map_or(0, |d| d.available_space()),
            disk_total_bytes: disk.map_or(0, |d| d.total_space()),
            agent_rss_bytes: rss,
        }
    }
}
