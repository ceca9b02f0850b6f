//! The `tcp` objects, read into [`Tcp`]: TCP settings for one kind of socket. A listener's `tcp` is for its
//! client-facing sockets; the file's `upstream_tcp`, and a rule's `tcp` over it, for the
//! sockets to upstreams. Checked for form here; whether the kernel offers a congestion
//! control algorithm is checked where sockets are made (`net::transport`).
//!
//! ```json
//! "tcp": { "congestion": "bbr", "notsent_lowat": 16384,
//!          "keepalive": { "idle_s": 60, "interval_s": 10, "count": 6 }, "user_timeout_s": 60,
//!          "fast_open": false }
//! ```

use super::values::{Bounded, Object, invalid, parse_string};
use crate::tcp_options::{Keepalive, Tcp};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A `tcp` object as the file has it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFile {
    #[serde(default, deserialize_with = "congestion")]
    congestion: Option<String>,
    notsent_lowat: Option<Bounded<1, { i32::MAX as u64 }>>,
    keepalive: Option<Object<KeepaliveFile>>,
    user_timeout_s: Option<Bounded<0, 86_400>>,
    fast_open: Option<bool>,
}

/// Bounds as the kernel has them (`TCP_KEEPIDLE` and `TCP_KEEPINTVL` up to 32,767 s,
/// `TCP_KEEPCNT` up to 127).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepaliveFile {
    idle_s: Option<Bounded<1, 32_767>>,
    interval_s: Option<Bounded<1, 32_767>>,
    count: Option<Bounded<1, 127>>,
}

impl<'de> Deserialize<'de> for Tcp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Object(file) = Object::<TcpFile>::deserialize(d)?;
        let default = Keepalive::DEFAULT;
        Ok(Tcp {
            congestion: file.congestion,
            notsent_lowat: file.notsent_lowat.map(|b| b.0 as u32),
            keepalive: file.keepalive.map(|Object(k)| Keepalive {
                idle: k.idle_s.map_or(default.idle, |b| Duration::from_secs(b.0)),
                interval: k
                    .interval_s
                    .map_or(default.interval, |b| Duration::from_secs(b.0)),
                count: k.count.map_or(default.count, |b| b.0 as u32),
            }),
            user_timeout: file.user_timeout_s.map(|b| Duration::from_secs(b.0)),
            fast_open: file.fast_open,
        })
    }
}

const CONGESTION_EXPECTED: &str = "a congestion control algorithm's name, like \"bbr\" or \"cubic\" (see /proc/sys/net/ipv4/tcp_available_congestion_control)";

/// A name the kernel could have: 1 to 15 lowercase letters, digits, `_` or `-`.
fn congestion<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_string(d, CONGESTION_EXPECTED, |text| {
        let valid = (1..16).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Some(text.to_owned()))
        } else {
            Err(invalid(text, CONGESTION_EXPECTED))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tcp, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn every_key_is_optional_and_keepalive_keys_default_one_by_one() {
        assert_eq!(parse("{}").unwrap(), Tcp::default());
        let tcp = parse(
            r#"{"congestion": "bbr", "notsent_lowat": 16384, "keepalive": {"idle_s": 30}, "user_timeout_s": 45, "fast_open": true}"#,
        )
        .unwrap();
        assert_eq!(
            tcp,
            Tcp {
                congestion: Some("bbr".into()),
                notsent_lowat: Some(16384),
                keepalive: Some(Keepalive {
                    idle: Duration::from_secs(30),
                    ..Keepalive::DEFAULT
                }),
                user_timeout: Some(Duration::from_secs(45)),
                fast_open: Some(true),
            }
        );
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        for (text, expected) in [
            (r#"{"congestion": "BBR"}"#, "congestion control algorithm"),
            (r#"{"congestion": ""}"#, "congestion control algorithm"),
            (r#"{"notsent_lowat": 0}"#, "an integer from 1"),
            (
                r#"{"keepalive": {"count": 200}}"#,
                "an integer from 1 to 127",
            ),
            (r#"{"user_timeout": 5}"#, "unknown field `user_timeout`"),
            (r#"{"keepalive": [60]}"#, "an object"),
            (r#"{"fast_open": "yes"}"#, "a boolean"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
