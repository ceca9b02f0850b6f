//! Live configuration changes: on SIGHUP, and whenever the config file's directory changes.
//!
//! The directory is watched, not the file: editors replace a file by renaming a temporary
//! one over it, and Kubernetes swaps a ConfigMap by re-pointing a symlink; a watch on the
//! old file would see neither. A new file is parsed and validated completely before the
//! relay switches to it; an invalid one changes nothing.

use crate::config::Config;
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
    listen_fixed: bool,
    /// The file's content when it was last read, valid or not.
    last_read: Vec<u8>,
    changes: mpsc::UnboundedReceiver<()>,
    hangups: Option<Signal>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Reloader {
    /// Starts watching now, before the relay announces it is listening: a change or a SIGHUP
    /// that arrives early must not be missed (an unhandled SIGHUP would end the process).
    /// `loaded` is the text the running rules were parsed from. `listen_fixed` says the
    /// listeners came from `--listen`, so the file's `listen` is not theirs to change.
    pub fn install(
        path: PathBuf,
        loaded: Vec<u8>,
        relay: Arc<Relay>,
        listen_fixed: bool,
    ) -> Reloader {
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
            listen_fixed,
            last_read: loaded,
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
            }
            let reported = reload(
                &self.path,
                &self.relay,
                self.listen_fixed,
                trigger,
                &mut self.last_read,
            );
            if reported || trigger == Trigger::Hangup {
                systemd::ready(&self.relay);
            }
        }
    }
}

/// Reloads and reports the result once, in the log and in the metrics; false when a file
/// event left the file as it was, and there was nothing to report.
fn reload(
    path: &Path,
    relay: &Relay,
    listen_fixed: bool,
    trigger: Trigger,
    last_read: &mut Vec<u8>,
) -> bool {
    let trigger = match trigger {
        Trigger::File => "file",
        Trigger::Hangup => "sighup",
    };
    match apply(path, relay, listen_fixed, trigger == "file", last_read) {
        Ok(None) => return false,
        Ok(Some(rules)) => {
            relay.metrics().reload(true);
            tracing::info!(trigger, rules, "config reloaded");
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

/// Reads, validates and applies the file; `Ok(None)` when a file event left it unchanged.
/// `last_read` is the content read last time, valid or not, so a change elsewhere in the
/// directory is not a reload and an invalid file is reported once.
fn apply(
    path: &Path,
    relay: &Relay,
    listen_fixed: bool,
    only_if_changed: bool,
    last_read: &mut Vec<u8>,
) -> Result<Option<usize>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if only_if_changed && *last_read == text {
        return Ok(None);
    }
    *last_read = text;
    let text = std::str::from_utf8(last_read)
        .map_err(|e| format!("{}: not UTF-8: {e}", path.display()))?;
    let mut config = Config::parse(text, path).map_err(|e| e.to_string())?;
    let running = relay.settings().config.listen.clone();
    if !listen_fixed && config.listen != running {
        tracing::warn!(
            path = %path.display(),
            "listen changed; listeners change only on restart, the rest of the file applies now"
        );
    }
    config.listen = running;
    let admin = relay.settings().config.admin;
    if config.admin != admin {
        tracing::warn!(path = %path.display(), "admin changed; it changes only on restart");
        config.admin = admin;
    }
    let rules = config.rules.len();
    relay.replace(config)?;
    Ok(Some(rules))
}

fn watch_directory(
    path: &Path,
    changes: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
        {
            let _ = changes.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Settings;

    fn allowing(names: &[&str]) -> String {
        serde_json::json!({ "allow": names }).to_string()
    }

    /// A regression: the watch began after start-up had read the file, and the first read
    /// for comparison came later still, so a change in between was taken as the running
    /// rules and never applied.
    #[tokio::test(start_paused = true)]
    async fn a_change_between_loading_and_watching_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        let loaded = allowing(&["a.example.com"]);
        let config = Config::parse(&loaded, &path).unwrap();
        let relay = Arc::new(Relay::new(
            Settings::new(config, &[], &[], None).unwrap(),
            Vec::new(),
            Vec::new(),
        ));
        std::fs::write(&path, allowing(&["a.example.com", "b.example.com"])).unwrap();
        tokio::spawn(Reloader::install(path, loaded.into_bytes(), relay.clone(), false).run());
        // The clock is paused: this returns once the reloader has nothing left to do.
        tokio::time::sleep(SETTLE * 10).await;
        assert_eq!(relay.settings().config.rules.len(), 2);
    }
}
