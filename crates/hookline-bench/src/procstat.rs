//! CPU time and resident memory of the processes under test, from `/proc` (Linux).
//!
//! Per run: CPU is the difference of `utime + stime` between the run's start and end;
//! memory is `VmRSS` at the end and `VmHWM` (peak) over the run, the peak being reset at
//! the run's start by writing `5` to `/proc/<pid>/clear_refs` (allowed for processes of
//! the same user). When the reset is refused the peak is the process's lifetime peak,
//! and the report says so.

use std::fs;

/// A process to watch: its name in the report and its pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Parses `ingest=123,router=456`; the empty string is no process.
pub fn parse_pids(text: &str) -> Result<Vec<Watched>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, pid) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=pid"))?;
            let pid = pid
                .trim()
                .parse::<u32>()
                .map_err(|e| format!("{part:?}: pid: {e}"))?;
            Ok(Watched {
                name: name.trim().to_owned(),
                pid,
            })
        })
        .collect()
}

/// `utime + stime` (clock ticks) from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in kB.
pub fn status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub cpu_ticks: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// Reads `/proc/<pid>`; `None` when the process is gone or unreadable.
pub fn read(pid: u32) -> Option<Reading> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Reading {
        cpu_ticks: cpu_ticks(&stat)?,
        rss_kb: status_kb(&status, "VmRSS")?,
        hwm_kb: status_kb(&status, "VmHWM")?,
    })
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS; false if refused.
pub fn reset_peak(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A process at the start of a run.
#[derive(Debug, Clone)]
pub struct Start {
    pub watched: Watched,
    pub reading: Option<Reading>,
    /// Whether the peak was reset, i.e. the end's `VmHWM` is this run's peak.
    pub peak_reset: bool,
}

/// A process over one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: String,
    pub cpu_s: f64,
    pub rss_end_mb: f64,
    pub rss_peak_mb: f64,
    /// `run` when the peak covers this run only, `process` when it is the lifetime peak.
    pub peak_scope: &'static str,
}

/// Starts a run: resets peaks and reads every process.
pub fn start(watched: &[Watched]) -> Vec<Start> {
    watched
        .iter()
        .map(|w| {
            let peak_reset = reset_peak(w.pid);
            Start {
                watched: w.clone(),
                reading: read(w.pid),
                peak_reset,
            }
        })
        .collect()
}

/// Ends a run: the figures of the processes still readable.
pub fn finish(starts: &[Start], clock_ticks: u64) -> Vec<Figure> {
    starts
        .iter()
        .filter_map(|s| {
            let (before, after) = (s.reading?, read(s.watched.pid)?);
            Some(figure(
                &s.watched.name,
                before,
                after,
                s.peak_reset,
                clock_ticks,
            ))
        })
        .collect()
}

/// The figure of one process from its readings at the start and the end of a run.
pub fn figure(
    name: &str,
    before: Reading,
    after: Reading,
    peak_reset: bool,
    clock_ticks: u64,
) -> Figure {
    Figure {
        name: name.to_owned(),
        cpu_s: after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks.max(1) as f64,
        rss_end_mb: after.rss_kb as f64 / 1024.0,
        rss_peak_mb: after.hwm_kb as f64 / 1024.0,
        peak_scope: if peak_reset { "run" } else { "process" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1234 567 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_lines_in_kb() {
        let status = "Name:\thookline-router\nVmHWM:\t  112640 kB\nVmRSS:\t   65536 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(65536));
        assert_eq!(status_kb(status, "VmHWM"), Some(112640));
        assert_eq!(status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn pids_from_the_command_line() {
        assert_eq!(
            parse_pids("ingest=12, broker=34"),
            Ok(vec![
                Watched {
                    name: "ingest".into(),
                    pid: 12
                },
                Watched {
                    name: "broker".into(),
                    pid: 34
                }
            ])
        );
        assert_eq!(parse_pids(""), Ok(vec![]));
        assert!(parse_pids("ingest").is_err());
        assert!(parse_pids("ingest=x").is_err());
    }

    #[test]
    fn figure_of_a_run() {
        let before = Reading {
            cpu_ticks: 100,
            rss_kb: 1024,
            hwm_kb: 4096,
        };
        let after = Reading {
            cpu_ticks: 350,
            rss_kb: 2048,
            hwm_kb: 8192,
        };
        let f = figure("delivery", before, after, true, 100);
        assert_eq!(f.cpu_s, 2.5);
        assert_eq!((f.rss_end_mb, f.rss_peak_mb), (2.0, 8.0));
        assert_eq!(f.peak_scope, "run");
    }

    #[test]
    fn this_process_is_readable() {
        let reading = read(std::process::id());
        assert!(reading.is_some_and(|r| r.rss_kb > 0));
    }
}
