//! The relay's life, in-process: the grace period, the drain and a second signal, on
//! tokio's paused clock. Nothing here waits on a socket once the clock is paused: the only
//! connection is one that never sends, so each wait ends on a timer, at an exact virtual
//! time. Real signals to a real process are `tests/fleet.rs` and `tests/operate.rs`.

mod common;

use snirelay::lifecycle::Started;
use snirelay::state::Relay;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

const GRACE: Duration = Duration::from_secs(5);
const DRAIN: Duration = Duration::from_secs(30);

/// A relay on a loopback port with a 5 s grace and a 30 s drain, whose hello deadline
/// (10 minutes) outlasts both, so a silent client stays live through them.
async fn started(dir: &Path) -> Started {
    let text = r#"{
  "listen": ["127.0.0.1:0"],
  "allow": ["a.example.com"],
  "timeouts": {"lb_grace_s": 5, "drain_s": 30, "hello_ms": 600000}
}"#;
    common::start_in_process(dir, text).await
}

/// How many connections ended with `reason`, from /metrics' text.
fn ended(relay: &Relay, reason: &str) -> u64 {
    let text = relay.metrics().render(relay.counters(), false);
    let series = format!("snirelay_connections_total{{outcome=\"rejected\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

/// Whether `elapsed` is `expected` on the paused clock: tokio's timer rounds each deadline
/// up to its next millisecond, and the clock was paused between two.
fn took(elapsed: Duration, expected: Duration) -> bool {
    (expected..expected + Duration::from_millis(3)).contains(&elapsed)
}

/// Starts serving, connects a client that never sends, and returns once the relay has
/// admitted it, with the serving task and the client.
async fn serving_one_silent_client(started: Started) -> (tokio::task::JoinHandle<()>, TcpStream) {
    let addr = started.addrs()[0];
    let relay = started.relay().clone();
    let serving = tokio::spawn(started.serve());
    let client = TcpStream::connect(addr).await.unwrap();
    while relay.counters().active() == 0 {
        tokio::task::yield_now().await;
    }
    (serving, client)
}

#[tokio::test(start_paused = true)]
async fn a_signal_turns_readiness_off_at_once_and_stops_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let started = started(dir.path()).await;
    let relay = started.relay().clone();
    let stopper = started.stopper();
    let serving = tokio::spawn(started.serve());
    tokio::task::yield_now().await;
    assert_eq!(relay.readiness(), Ok("ready"));
    let signalled = Instant::now();
    stopper.signal("SIGTERM");
    tokio::task::yield_now().await;
    assert!(relay.readiness().unwrap_err().contains("shutting down"));
    serving.await.unwrap();
    // Nothing live: the drain ends as soon as accepting does.
    assert_eq!(signalled.elapsed(), GRACE);
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_cuts_the_grace_period_short() {
    let dir = tempfile::tempdir().unwrap();
    let started = started(dir.path()).await;
    let stopper = started.stopper();
    let serving = tokio::spawn(started.serve());
    let signalled = Instant::now();
    stopper.signal("SIGTERM");
    stopper.signal("SIGINT");
    serving.await.unwrap();
    assert_eq!(signalled.elapsed(), Duration::ZERO);
}

/// One silent client live, then SIGTERM on the paused clock, and a second one `second`
/// later if given: how long the relay took to stop, and how many connections it ended
/// as `shutdown`.
async fn stop_with_one_live(second: Option<Duration>) -> (Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let started = started(dir.path()).await;
    let relay = started.relay().clone();
    let stopper = started.stopper();
    let (serving, _client) = serving_one_silent_client(started).await;
    tokio::time::pause();
    let signalled = Instant::now();
    stopper.signal("SIGTERM");
    if let Some(second) = second {
        tokio::spawn(async move {
            tokio::time::sleep(second).await;
            stopper.signal("SIGTERM");
        });
    }
    serving.await.unwrap();
    assert_eq!(relay.counters().active(), 0);
    (signalled.elapsed(), ended(&relay, "shutdown"))
}

#[tokio::test(flavor = "current_thread")]
async fn a_live_connection_gets_the_drain_and_is_then_ended_as_shutdown() {
    let (elapsed, ended) = stop_with_one_live(None).await;
    assert!(took(elapsed, GRACE + DRAIN), "{elapsed:?}");
    assert_eq!(ended, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_second_signal_during_the_drain_ends_live_connections_then() {
    let second = GRACE + Duration::from_secs(7);
    let (elapsed, ended) = stop_with_one_live(Some(second)).await;
    assert!(took(elapsed, second), "{elapsed:?}");
    assert_eq!(ended, 1);
}
