//! The one log line each connection leaves, and the metrics record made from the same
//! fields, so the two always agree.

use crate::hello::ClientHello;
use crate::ja4::Ja4;
use crate::net::tcp_info::Legs;
use crate::outcome::{Outcome, Rejection, Transfer, UNLISTED};
use crate::proxy::Tlvs;
use crate::resolve::Source;
use crate::telemetry::metrics::{FinishedConnection, Metrics};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the log line says of the hello, formatted once it is read: a few strings are
/// cheaper to keep through a long-lived connection than the parsed lists. The strings stay
/// empty when the line cannot be written.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct HelloFields {
    sni: Box<str>,
    alpn: Box<str>,
    tls: Box<str>,
    /// Boxed: most of a long-lived connection's record is better spent elsewhere.
    ja4: Option<Box<Ja4>>,
    ech: bool,
    len: usize,
}

/// What the log line says of a CONNECT request.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Request {
    target: Box<str>,
    at: Duration,
    user: Option<Box<str>>,
}

/// The one log line a connection leaves, filled in as the connection goes. It travels with
/// a connection handed to the next relay, its start as the time since.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectionRecord {
    #[serde(with = "age")]
    started: Instant,
    client: SocketAddr,
    /// The balancer and its TLVs, when a PROXY protocol header named the client. Boxed:
    /// most connections have none, and the log lives as long as the connection.
    via: Option<Box<(SocketAddr, Tlvs)>>,
    listener: SocketAddr,
    /// On a CONNECT listener: the `host:port` the request named, when it was read, and
    /// the user its credentials named. Boxed, as `via`: the record lives as long as the
    /// connection.
    request: Option<Box<Request>>,
    hello: Option<HelloFields>,
    hello_done: Option<Duration>,
    rule: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    dns: Option<Source>,
    /// The client's group, in a file with groups.
    group: Option<Arc<str>>,
    /// Forwarded by monitor mode although no rule allows it.
    would_refuse: bool,
    /// Whether the upstream connection was a pool's ready one; `None` where no pool serves
    /// the upstream.
    pooled: Option<bool>,
    connect_done: Option<Duration>,
}

impl ConnectionRecord {
    /// A connection from `client` accepted on `listener`, starting now.
    pub fn new(client: SocketAddr, listener: SocketAddr) -> Self {
        ConnectionRecord {
            started: Instant::now(),
            client,
            via: None,
            listener,
            request: None,
            hello: None,
            hello_done: None,
            rule: None,
            upstream: None,
            dns: None,
            group: None,
            would_refuse: false,
            pooled: None,
            connect_done: None,
        }
    }

    /// A connection from `client` accepted on `listener` `age` ago, by the relay this one
    /// replaced.
    pub fn since(client: SocketAddr, listener: SocketAddr, age: Duration) -> Self {
        let mut record = ConnectionRecord::new(client, listener);
        record.started = record.started.checked_sub(age).unwrap_or(record.started);
        record
    }

    /// How long ago the connection was accepted.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// A PROXY protocol header named the real client: it becomes `client`, and the
    /// socket's peer (the balancer) becomes `peer`.
    pub fn proxied(&mut self, client: SocketAddr, tlvs: Tlvs) {
        let peer = std::mem::replace(&mut self.client, client);
        self.via = Some(Box::new((peer, tlvs)));
    }

    /// The rule label the connection's bytes are counted under.
    pub fn rule_label(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    /// The listener it was accepted on.
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// The client as the log names it: the socket's peer, or the one a PROXY header named.
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// A CONNECT request for `host:port` is read.
    pub fn requested(&mut self, host: &crate::hostname::Hostname, port: u16) {
        self.request = Some(Box::new(Request {
            target: format!("{host}:{port}").into(),
            at: self.started.elapsed(),
            user: None,
        }));
    }

    /// The request's credentials are those of `user`.
    pub fn user(&mut self, user: &str) {
        if let Some(request) = &mut self.request {
            request.user = Some(user.into());
        }
    }

    /// Whether connection lines are written (`snirelay::connection` at info).
    pub fn logged() -> bool {
        tracing::enabled!(target: "snirelay::connection", tracing::Level::INFO)
    }

    /// The hello is complete. Its names are copied for the line only when the line can be
    /// written (`snirelay::connection` at info) or the connection is `audited`: three
    /// allocations per connection otherwise spent for nothing (`tests/allocations.rs` counts
    /// them).
    pub fn hello(&mut self, hello: &ClientHello, audited: bool) {
        self.hello_done = Some(self.started.elapsed());
        let (sni, alpn, tls) =
            if audited || tracing::enabled!(target: "snirelay::connection", tracing::Level::INFO) {
                (
                    hello.sni.as_str().into(),
                    hello.alpn.join(",").into(),
                    versions(&hello.versions).into(),
                )
            } else {
                Default::default()
            };
        self.hello = Some(HelloFields {
            sni,
            alpn,
            tls,
            ja4: hello.ja4.map(Box::new),
            ech: hello.ech,
            len: hello.len,
        });
    }

    /// The client's group decides the connection.
    pub fn group(&mut self, group: Arc<str>) {
        self.group = Some(group);
    }

    /// The rule that allowed the connection, as written ([`crate::rules::Rule::label`]).
    pub fn rule(&mut self, rule: Arc<str>) {
        self.rule = Some(rule);
    }

    /// No rule allows the name; monitor mode forwards it anyway. A forwarded connection is
    /// then logged with reason `would_refuse` (how it ended becomes the detail), under the
    /// rule label [`UNLISTED`].
    pub fn would_refuse(&mut self) {
        self.would_refuse = true;
        self.rule = Some(UNLISTED.into());
    }

    /// Where the destination's addresses came from.
    pub fn dns(&mut self, source: Source) {
        self.dns = Some(source);
    }

    /// A pool serves the upstream; `taken`: the connection was one of its ready ones.
    pub fn pooled(&mut self, taken: bool) {
        self.pooled = Some(taken);
    }

    /// The upstream connection is up.
    pub fn connected(&mut self, upstream: SocketAddr) {
        self.connect_done = Some(self.started.elapsed());
        self.upstream = Some(upstream);
    }

    /// Counts the connection in `metrics`, then logs it; a forwarded one with what its
    /// sockets said of both legs as it ended.
    pub fn emit(self, result: Result<Transfer, Rejection>, legs: Legs, metrics: &Metrics) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let total = self.started.elapsed();
        // From what decided the destination (the request, on a CONNECT listener; else the
        // hello) to the upstream connection.
        let decided = self.request.as_ref().map(|r| r.at).or(self.hello_done);
        let connect = self
            .connect_done
            .zip(decided)
            .map(|(c, d)| c.saturating_sub(d));
        let hello = self.hello.as_ref();
        let Outcome {
            outcome,
            reason,
            detail,
            side,
        } = Outcome::of(&result, self.would_refuse);
        let (transfer, error) = match &result {
            Ok(t) => (Some(*t), None),
            Err(r) => (None, Some(r.to_string())),
        };
        // Counted before logged: whoever sees the line finds it in the metrics too.
        metrics.connection(&FinishedConnection {
            outcome,
            reason,
            group: self.group.as_ref(),
            rule: self.rule.as_ref(),
            hello_bytes: hello.map(|h| h.len),
            hello: self.hello_done,
            connect,
            total,
            resolver_cache_hit: match self.dns {
                Some(Source::Cache) => Some(true),
                Some(Source::Query) => Some(false),
                _ => None,
            },
        });
        if result.is_ok() {
            metrics.legs.ended(self.listener, &legs);
        }
        // Every decision about a client is audited, never rate-limited.
        if metrics.audit.enabled()
            && !matches!(result, Err(Rejection::ProxyLocal | Rejection::PoolUnused))
        {
            let outcome = Outcome::of(&result, self.would_refuse);
            metrics
                .audit
                .write(self.audit_line(&outcome, transfer, total));
        }
        // A balancer's health check, and an edge's ready connection closed unused, are
        // counted, never logged: they come every few seconds. Rejections anyone can cause
        // are logged up to a rate per reason, then summed up.
        match &result {
            Err(Rejection::ProxyLocal | Rejection::PoolUnused) => return,
            Err(_) if !metrics.rejections.allow(reason, Instant::now()) => {
                metrics.suppressed(reason);
                return;
            }
            _ => {}
        }
        let (peer, tlvs) = match self.via.as_deref() {
            Some((peer, tlvs)) => (Some(peer), Some(tlvs)),
            None => (None, None),
        };
        tracing::info!(
            target: "snirelay::connection",
            client = %self.client,
            peer = peer.map(|p| p.to_string()),
            listener = %self.listener,
            alibaba_privatelink = tlvs.and_then(|t| t.alibaba_privatelink.as_deref()),
            alibaba_vpc_id = tlvs.and_then(|t| t.alibaba_vpc_id.as_deref()),
            alibaba_endpoint_id = tlvs.and_then(|t| t.alibaba_endpoint_id.as_deref()),
            alibaba_endpoint_service_id = tlvs.and_then(|t| t.alibaba_endpoint_service_id.as_deref()),
            aws_vpce_id = tlvs.and_then(|t| t.aws_vpce_id.as_deref()),
            connect = self.request.as_ref().map(|r| &*r.target),
            user = self.request.as_ref().and_then(|r| r.user.as_deref()),
            group = self.group.as_deref(),
            sni = hello.map(|h| &*h.sni),
            alpn = hello.map(|h| &*h.alpn).filter(|a| !a.is_empty()),
            tls = hello.map(|h| &*h.tls),
            ja4 = hello.and_then(|h| h.ja4.as_deref()).map(Ja4::as_str),
            ech = hello.map(|h| h.ech),
            rule = self.rule.as_deref(),
            upstream = self.upstream.map(|a| a.to_string()),
            pooled = self.pooled,
            outcome,
            reason,
            detail,
            side = side.map(|s| s.word()),
            error,
            bytes_up = transfer.map(|t| t.up),
            bytes_down = transfer.map(|t| t.down),
            bytes_spliced = transfer.map(|t| t.spliced),
            request_ms = self.request.as_ref().map(|r| ms(r.at)),
            hello_ms = self.hello_done.map(ms),
            connect_ms = connect.map(ms),
            total_ms = ms(total),
            client_rtt_ms = legs.client.map(|l| f64::from(l.rtt_us) / 1e3),
            client_min_rtt_ms = legs.client.and_then(|l| l.min_rtt_us).map(|us| f64::from(us) / 1e3),
            client_retrans = legs.client.map(|l| l.retrans_segments),
            client_delivery_mbps = legs.client.and_then(|l| l.delivery_rate).map(mbps),
            upstream_rtt_ms = legs.upstream.map(|l| f64::from(l.rtt_us) / 1e3),
            upstream_min_rtt_ms = legs.upstream.and_then(|l| l.min_rtt_us).map(|us| f64::from(us) / 1e3),
            upstream_retrans = legs.upstream.map(|l| l.retrans_segments),
            upstream_delivery_mbps = legs.upstream.and_then(|l| l.delivery_rate).map(mbps),
            "connection"
        );
    }
}

impl ConnectionRecord {
    /// The audit log's line for this connection: when, who, what was asked for, the
    /// decision and, for a forwarded one, what moved.
    fn audit_line(&self, outcome: &Outcome, transfer: Option<Transfer>, total: Duration) -> String {
        use serde_json::{Map, Value};
        let mut line = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                line.insert(key.to_owned(), value);
            }
        };
        let text = |s: &str| Some(Value::from(s));
        put(
            "time",
            text(&crate::telemetry::audit::utc(std::time::SystemTime::now())),
        );
        put("client", text(&self.client.to_string()));
        put("peer", self.via.as_ref().map(|v| v.0.to_string().into()));
        put("listener", text(&self.listener.to_string()));
        put("connect", self.request.as_ref().map(|r| (*r.target).into()));
        put(
            "user",
            self.request
                .as_ref()
                .and_then(|r| r.user.as_deref())
                .map(Value::from),
        );
        put("group", self.group.as_deref().map(Value::from));
        let hello = self.hello.as_ref();
        put("sni", hello.map(|h| (*h.sni).into()));
        put(
            "alpn",
            hello
                .filter(|h| !h.alpn.is_empty())
                .map(|h| (*h.alpn).into()),
        );
        put("rule", self.rule.as_deref().map(Value::from));
        put("upstream", self.upstream.map(|a| a.to_string().into()));
        put("outcome", text(outcome.outcome));
        put("reason", text(outcome.reason));
        put("detail", outcome.detail.map(Value::from));
        put("side", outcome.side.map(|s| s.word().into()));
        put("bytes_up", transfer.map(|t| t.up.into()));
        put("bytes_down", transfer.map(|t| t.down.into()));
        put(
            "total_ms",
            Some(((total.as_secs_f64() * 1e6).round() / 1e3).into()),
        );
        Value::Object(line).to_string()
    }
}

/// A start time as the time since, in microseconds: what another process can make sense of.
mod age {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    use tokio::time::Instant;

    pub fn serialize<S: Serializer>(started: &Instant, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(started.elapsed().as_micros() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        let now = Instant::now();
        let age = Duration::from_micros(u64::deserialize(d)?);
        Ok(now.checked_sub(age).unwrap_or(now))
    }
}

/// A delivery rate in bytes per second as megabits per second, to three decimals.
fn mbps(bytes_per_second: u64) -> f64 {
    (bytes_per_second as f64 * 8.0 / 1e3).round() / 1e3
}

/// The offered TLS versions as the log shows them: `1.3,1.2`, or `0x7f1c` for a version
/// without a name. One allocation, of the exact size.
fn versions(offered: &[u16]) -> String {
    let name = |v: u16| match v {
        0x0304 => Some("1.3"),
        0x0303 => Some("1.2"),
        0x0302 => Some("1.1"),
        0x0301 => Some("1.0"),
        _ => None,
    };
    let len: usize = offered.iter().map(|&v| name(v).map_or(6, str::len)).sum();
    let mut out = String::with_capacity(len + offered.len().saturating_sub(1));
    for (i, &v) in offered.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match name(v) {
            Some(name) => out.push_str(name),
            None => {
                let _ = write!(out, "0x{v:04x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::versions;

    #[test]
    fn versions_are_named_or_in_hex_in_a_string_of_the_exact_size() {
        for (offered, shown) in [
            (&[][..], ""),
            (&[0x0304][..], "1.3"),
            (
                &[0x7a7a, 0x0304, 0x0303, 0x0302, 0x0301][..],
                "0x7a7a,1.3,1.2,1.1,1.0",
            ),
        ] {
            let text = versions(offered);
            assert_eq!(text, shown);
            assert_eq!(text.capacity(), text.len(), "{shown}");
        }
    }
}
