//! Live configuration changes: on SIGHUP, and whenever the config file's directory changes.
//!
//! The directory is watched, not the file: editors replace a file by renaming a temporary
//! one over it, and Kubernetes swaps a ConfigMap by re-pointing a symlink; a watch on the
//! old file would see neither. A new file is parsed and validated completely before the
//! relay switches to it; an invalid one changes nothing.

use crate::config::Config;
use crate::rules::RuleDiff;
use crate::state::Relay;
use crate::systemd;
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// Editors write in several steps; a change is read once it has been quiet this long.
const SETTLE: Duration = Duration::from_millis(50);

/// What the command line fixed, so the file's own values are not the reloader's to apply
/// or warn about.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixed {
    /// `--listen` was given.
    pub listen: bool,
    /// `--admin` was given.
    pub admin: bool,
}

/// What made the relay read its config again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    File,
    Hangup,
}

/// Watches the config file and reloads the relay on changes and on SIGHUP.
pub struct Reloader {
    path: PathBuf,
    relay: Arc<Relay>,
    fixed: Fixed,
    file: FileState,
    changes: mpsc::UnboundedReceiver<()>,
    hangups: Option<Signal>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Reloader {
    /// Starts watching now, before the relay announces it is listening: a change or a SIGHUP
    /// that arrives early must not be missed (an unhandled SIGHUP would end the process).
    /// `loaded` is the text the running rules were parsed from. `fixed` says what came
    /// from the command line, so the file's values for it are not theirs to change.
    pub fn install(path: PathBuf, loaded: Vec<u8>, relay: Arc<Relay>, fixed: Fixed) -> Reloader {
        let (tx, changes) = mpsc::unbounded_channel();
        // The file may have changed after it was loaded and before the watch began, when no
        // event could report it; one comparison against `loaded` at start-up covers that.
        let _ = tx.send(());
        let watcher = watch_directory(&path, tx)
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP")
            })
            .ok();
        let hangups = signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot handle SIGHUP"))
            .ok();
        Reloader {
            path,
            relay,
            fixed,
            file: FileState::new(loaded),
            changes,
            hangups,
            _watcher: watcher,
        }
    }

    /// Reloads on every change until the process ends.
    pub async fn run(mut self) {
        loop {
            let trigger = tokio::select! {
                Some(()) = self.changes.recv() => Trigger::File,
                Some(()) = async { self.hangups.as_mut()?.recv().await } => Trigger::Hangup,
                else => return,
            };
            if trigger == Trigger::File {
                tokio::time::sleep(SETTLE).await;
                while self.changes.try_recv().is_ok() {}
            }
            // systemd's `notify-reload` sends SIGHUP and waits for RELOADING=1, then READY=1.
            if trigger == Trigger::Hangup {
                systemd::reloading();
                // logrotate has moved the audit log away, or may have.
                self.relay.metrics().audit.reopen();
            }
            let reported = reload(&self.path, &self.relay, self.fixed, trigger, &mut self.file);
            if reported || trigger == Trigger::Hangup {
                systemd::ready(&self.relay);
            }
        }
    }
}

/// What the reloader knows of the file, so that only changes are reported, and each
/// once.
#[derive(Debug)]
pub(crate) struct FileState {
    /// The text the rules in force were parsed from.
    running: Vec<u8>,
    /// What the last read gave: the text, valid or not, or why it failed.
    last_read: Result<Vec<u8>, String>,
}

impl FileState {
    fn new(loaded: Vec<u8>) -> FileState {
        FileState {
            running: loaded.clone(),
            last_read: Ok(loaded),
        }
    }
}

/// What a read of the file came to.
#[derive(Debug, PartialEq, Eq)]
enum Reloaded {
    /// A file event, and the file reads as last time: nothing to say.
    Unchanged,
    /// The file was unreadable or invalid, and now holds the rules in force again.
    Recovered,
    /// New rules are in force.
    Applied {
        rules: usize,
        diff: RuleDiff,
        /// The other settings that changed, by key ([`Config::changed_settings`]).
        settings: Vec<&'static str>,
    },
}

/// Reloads and reports the result once, in the log and in the metrics; false when a file
/// event left nothing to report.
fn reload(
    path: &Path,
    relay: &Relay,
    fixed: Fixed,
    trigger: Trigger,
    file: &mut FileState,
) -> bool {
    let trigger = match trigger {
        Trigger::File => "file",
        Trigger::Hangup => "sighup",
    };
    match apply(path, relay, fixed, trigger == "file", file) {
        Ok(Reloaded::Unchanged) => return false,
        Ok(Reloaded::Recovered) => {
            tracing::info!(
                trigger,
                "config file recovered; it holds the rules in force"
            );
        }
        Ok(Reloaded::Applied {
            rules,
            diff,
            settings,
        }) => {
            relay.metrics().reload(true);
            tracing::info!(
                trigger,
                rules,
                added = diff.added.join(", "),
                removed = diff.removed.join(", "),
                changed = diff.changed.join(", "),
                settings = settings.join(", "),
                "config reloaded"
            );
        }
        Err(error) => {
            relay.metrics().reload(false);
            tracing::error!(
                trigger,
                error,
                "config reload failed; keeping the previous rules"
            );
        }
    }
    true
}

/// Reads, validates and applies the file. On a file event (`only_if_changed`), a read that
/// gives what the last one gave, text or error, is `Unchanged`, so a failure is reported
/// once however many events follow, and a change elsewhere in the directory is no reload.
fn apply(
    path: &Path,
    relay: &Relay,
    fixed: Fixed,
    only_if_changed: bool,
    file: &mut FileState,
) -> Result<Reloaded, String> {
    let read = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()));
    if only_if_changed && read == file.last_read {
        return Ok(Reloaded::Unchanged);
    }
    file.last_read.clone_from(&read);
    let text = read?;
    if only_if_changed && text == file.running {
        return Ok(Reloaded::Recovered);
    }
    let text =
        std::str::from_utf8(&text).map_err(|e| format!("{}: not UTF-8: {e}", path.display()))?;
    let mut config = Config::parse(text, path).map_err(|e| e.to_string())?;
    let running = relay.settings();
    if !fixed.listen && config.listen != running.config.listen {
        tracing::warn!(
            path = %path.display(),
            "listen changed; listeners change only on restart, the rest of the file applies now"
        );
    }
    config.listen.clone_from(&running.config.listen);
    if !fixed.admin && config.admin != running.config.admin {
        tracing::warn!(path = %path.display(), "admin changed; it changes only on restart");
        config.admin = running.config.admin;
    }
    if config.audit_log != running.config.audit_log {
        tracing::warn!(path = %path.display(), "audit_log changed; it changes only on restart");
        config.audit_log.clone_from(&running.config.audit_log);
    }
    let rules = config.rules.len();
    let diff = running.config.rules.diff(&config.rules);
    let settings = running.config.changed_settings(&config);
    relay.replace(config)?;
    file.running = text.as_bytes().to_vec();
    Ok(Reloaded::Applied {
        rules,
        diff,
        settings,
    })
}

/// Whether a change to `changed` (paths in the config's directory) may change the config
/// file: the file itself, or, where the file is a symlink into the same directory, the
/// first step of the link (Kubernetes mounts a ConfigMap as `rules.json -> ..data/rules.json`
/// and swaps `..data`). An event naming no path (the watch overflowed) may be anything.
/// `link` is the config file's symlink target, if it is one. Pure.
fn concerns(changed: &[PathBuf], config: &Path, link: Option<&Path>) -> bool {
    let head = link
        .filter(|l| l.is_relative())
        .and_then(|l| l.components().next())
        .map(|c| c.as_os_str());
    changed.is_empty()
        || changed.iter().any(|p| {
            let name = p.file_name();
            name.is_some() && (name == config.file_name() || name == head)
        })
}

fn watch_directory(
    path: &Path,
    changes: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let config = path.to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        // Reads (the relay's own included) say nothing changed: no syscall for them.
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let link = std::fs::read_link(&config).ok();
        if concerns(&event.paths, &config, link.as_deref()) {
            let _ = changes.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests;
