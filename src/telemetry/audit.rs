//! The audit log: one JSON line per decision (a forwarded connection with its totals when
//! it ends, a refused one with its reason, monitor mode's `would_refuse`), in a file of its
//! own (`"audit_log"`), never rate-limited. Lines go through a bounded queue to a writer
//! thread, so a slow disk never holds up a connection; what a full queue drops is counted
//! (`snirelay_audit_dropped_total`) and said in the operational log. SIGHUP makes the
//! writer reopen the file, so logrotate can move it away without `copytruncate`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Lines the queue holds before it drops: some seconds of a flood of refusals.
pub const QUEUE_LINES: usize = 65_536;
/// How often, at most, the operational log says lines were dropped.
const DROP_REPORT: Duration = Duration::from_secs(1);

/// The audit log's place among the metrics: its drop counter always (0 without a log), its
/// writer once one is opened.
#[derive(Debug, Default)]
pub struct AuditSink {
    dropped: Counter,
    writer: OnceLock<Audit>,
}

impl AuditSink {
    /// The sink, its counter registered in `registry`.
    pub fn registered(registry: &mut Registry) -> AuditSink {
        let sink = AuditSink::default();
        registry.register(
            "audit_dropped",
            "Audit log lines dropped because the audit writer's queue was full",
            sink.dropped.clone(),
        );
        sink
    }

    /// Starts writing to `path`; once only (later calls change nothing).
    pub fn open(&self, path: &Path) -> io::Result<()> {
        let audit = Audit::open(path, self.dropped.clone())?;
        let _ = self.writer.set(audit);
        Ok(())
    }

    /// Whether decisions are audited: the hello's names are then kept for the line even
    /// where the operational log would not write them.
    pub fn enabled(&self) -> bool {
        self.writer.get().is_some()
    }

    /// Queues `line` (without its newline); a full queue drops it and counts it.
    pub fn write(&self, line: String) {
        if let Some(audit) = self.writer.get() {
            audit.write(line);
        }
    }

    /// Reopens the file at its path before the next line (after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(audit) = self.writer.get() {
            audit.reopen.store(true, Ordering::Release);
        }
    }

    /// Writes out every queued line and closes the file: the relay is stopping.
    pub fn finish(&self) {
        if let Some(audit) = self.writer.get() {
            audit.finish();
        }
    }
}

/// An open audit log and its writer thread.
#[derive(Debug)]
struct Audit {
    lines: Mutex<Option<SyncSender<String>>>,
    dropped: Counter,
    reopen: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Audit {
    fn open(path: &Path, dropped: Counter) -> io::Result<Audit> {
        let file = open_append(path)?;
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_owned(),
            out: BufWriter::new(file),
            reopen: reopen.clone(),
            dropped: dropped.clone(),
            reported: 0,
            last_report: None,
        };
        let thread = std::thread::Builder::new()
            .name("snirelay-audit".into())
            .spawn(move || writer.run(&receiver))?;
        Ok(Audit {
            lines: Mutex::new(Some(sender)),
            dropped,
            reopen,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn write(&self, line: String) {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = match lines.as_ref() {
            Some(sender) => sender.try_send(line),
            None => return,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sent {
            self.dropped.inc();
        }
    }

    fn finish(&self) {
        // Closing the queue lets the writer drain it and end.
        drop(
            self.lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Appends, creating the file readable by its owner and group only (it names clients).
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// The writer thread's side.
struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    reopen: Arc<AtomicBool>,
    dropped: Counter,
    reported: u64,
    last_report: Option<Instant>,
}

impl Writer {
    /// Writes lines as they come, flushing whenever the queue is empty, until the queue
    /// closes. A reopen asked for is done before the next line.
    fn run(mut self, lines: &Receiver<String>) {
        loop {
            match lines.recv_timeout(DROP_REPORT) {
                Ok(line) => {
                    self.put(&line);
                    while let Ok(line) = lines.try_recv() {
                        self.put(&line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Err(e) = self.out.flush() {
                tracing::warn!(path = %self.path.display(), error = %e, "audit log write failed");
            }
            self.report_drops();
        }
        let _ = self.out.flush();
        self.report_drops();
    }

    fn put(&mut self, line: &str) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.reopen_file();
        }
        let _ = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"));
    }

    fn reopen_file(&mut self) {
        let _ = self.out.flush();
        match open_append(&self.path) {
            Ok(file) => self.out = BufWriter::new(file),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "cannot reopen the audit log; still writing to the file open before"
            ),
        }
    }

    /// Says, at most once a second, how many lines were dropped since it last said.
    fn report_drops(&mut self) {
        let dropped = self.dropped.get();
        let due = self
            .last_report
            .is_none_or(|at| at.elapsed() >= DROP_REPORT);
        if dropped > self.reported && due {
            tracing::warn!(
                dropped = dropped - self.reported,
                total = dropped,
                "audit log lines dropped: the writer's queue was full (snirelay_audit_dropped_total)"
            );
            self.reported = dropped;
            self.last_report = Some(Instant::now());
        }
    }
}

/// `time` as UTC in RFC 3339 with milliseconds, like `2026-12-07T19:10:02.123Z`. Pure.
pub fn utc(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_utc_with_milliseconds() {
        let at = |secs: u64, ms: u64| {
            utc(SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1796670602` says Mon Dec  7 19:10:02 UTC 2026.
        assert_eq!(at(1_796_670_602, 123), "2026-12-07T19:10:02.123Z");
        // A leap day, and the last second of a leap year.
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_735_689_599, 999), "2024-12-31T23:59:59.999Z");
    }

    #[test]
    fn every_line_is_written_in_order_and_a_reopen_starts_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::default();
        sink.open(&path).unwrap();
        assert!(sink.enabled());
        for i in 0..100 {
            sink.write(format!("{{\"n\":{i}}}"));
        }
        // As logrotate does: move the file away, then signal.
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.reopen();
        for i in 100..150 {
            sink.write(format!("{{\"n\":{i}}}"));
        }
        sink.finish();
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let all: Vec<String> = old.lines().chain(new.lines()).map(str::to_owned).collect();
        let expected: Vec<String> = (0..150).map(|i| format!("{{\"n\":{i}}}")).collect();
        assert_eq!(all, expected, "no line lost, none twice, in order");
        assert!(!new.is_empty(), "the reopen started a new file");
        assert_eq!(sink.dropped.get(), 0);
        // After finish nothing is written, and nothing panics.
        sink.write("late".into());
    }
}
