//! `snirelay check` for an edge relay and its far relay: what the pools need from the
//! rules that use them, and, given both files, from the far side's listener. Pure.

use crate::config::{Config, Listener, PoolSpec};
use crate::rules::{Host, Rule};

/// The rules whose connections `pool` carries: those pinned to its upstream.
fn riders<'c>(config: &'c Config, pool: &PoolSpec) -> Vec<&'c Rule> {
    config
        .rules
        .iter()
        .filter(|rule| rule.upstream.as_ref() == Some(&pool.upstream))
        .collect()
}

/// What `check` prints about the pools, a line each.
pub fn summary(config: &Config) -> String {
    config
        .pools
        .iter()
        .map(|pool| {
            format!(
                "  pool: {} ready to {}, each closed after {} s unused; used by {} rule(s)\n",
                pool.size,
                pool.upstream,
                pool.max_idle.as_secs(),
                riders(config, pool).len()
            )
        })
        .collect()
}

/// Pools an operator should look at twice in one file.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for pool in &config.pools {
        let riders = riders(config, pool);
        if riders.is_empty() {
            warnings.push(format!(
                "pool {0}: no rule's upstream is {0}, so its ready connections are never used",
                pool.upstream
            ));
        }
        let bare: Vec<String> = riders
            .iter()
            .filter(|rule| rule.send_proxy.is_none())
            .map(|rule| format!("\"{}\"", rule.pattern))
            .collect();
        if !bare.is_empty() {
            warnings.push(format!(
                "pool {}: {} send no PROXY header, so the far relay sees this edge as the client and gives its ready connections only its hello deadline; add \"send_proxy\": \"v2\"",
                pool.upstream,
                bare.join(", ")
            ));
        }
    }
    warnings
}

/// The far listeners that take `pool`'s connections: the same port, on its address or
/// on every address (for an upstream given by name, on any address).
fn takers<'f>(far: &'f Config, pool: &PoolSpec) -> Vec<&'f Listener> {
    let up = &pool.upstream;
    far.listen
        .iter()
        .filter(|l| {
            l.addr.port() == up.port
                && match up.host {
                    Host::Ip(ip) => l.addr.ip() == ip || l.addr.ip().is_unspecified(),
                    Host::Name(_) => true,
                }
        })
        .collect()
}

/// What does not fit between an edge's pools and the far relay's listeners.
pub fn pair(edge: &Config, far: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for pool in &edge.pools {
        let takers = takers(far, pool);
        if takers.is_empty() {
            problems.push(format!(
                "pool {}: the far relay has no listener on that address and port",
                pool.upstream
            ));
        }
        for listener in takers {
            let idle = pool.max_idle.as_secs();
            let wait = listener.proxy.as_ref().and_then(|p| p.header_wait);
            match (&listener.proxy, wait) {
                (None, _) => problems.push(format!(
                    "pool {}: the far listener {} takes no PROXY header; give it \"proxy_protocol\", \"trusted_proxies\" (the edges' networks) and \"proxy_header_wait_s\"",
                    pool.upstream, listener.addr
                )),
                (Some(_), None) => problems.push(format!(
                    "pool {}: the far listener {} closes a silent connection after hello_ms ({} ms), before the pool's max_idle_s ({idle} s); set its \"proxy_header_wait_s\" above {idle}",
                    pool.upstream,
                    listener.addr,
                    far.timeouts.hello.as_millis()
                )),
                (Some(_), Some(wait)) if wait <= pool.max_idle => problems.push(format!(
                    "pool {}: max_idle_s ({idle} s) must be shorter than the far listener {}'s proxy_header_wait_s ({} s), or the far relay closes ready connections first",
                    pool.upstream,
                    listener.addr,
                    wait.as_secs()
                )),
                (Some(_), Some(_)) => {}
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("t.json")).unwrap()
    }

    const EDGE: &str = r#"{
        "pools": [{ "upstream": "10.20.0.5:443", "size": 8, "max_idle_s": 30 }],
        "allow": [{ "name": "*.googleapis.com", "upstream": "10.20.0.5:443", "send_proxy": "v2" }]
    }"#;

    #[test]
    fn a_pool_no_rule_uses_or_whose_rules_send_no_header_is_named() {
        assert!(warnings(&config(EDGE)).is_empty());
        let unused = config(
            r#"{ "pools": [{ "upstream": "10.20.0.6:443", "size": 2 }],
                 "allow": [{ "name": "a.example.com", "upstream": "10.20.0.6:443" }, "b.example.com"] }"#,
        );
        let said = warnings(&unused);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("\"a.example.com\" send no PROXY header"),
            "{said:?}"
        );
        let nobody = config(
            r#"{ "pools": [{ "upstream": "10.20.0.7:443", "size": 2 }], "allow": ["b.example.com"] }"#,
        );
        assert!(warnings(&nobody)[0].contains("never used"));
        assert!(summary(&config(EDGE)).contains("8 ready to 10.20.0.5:443"));
    }

    #[test]
    fn the_far_side_must_wait_longer_for_a_header_than_the_edge_keeps_a_connection() {
        let edge = config(EDGE);
        let far = |listener: &str| {
            config(&format!(
                r#"{{ "listen": [{listener}], "allow": ["translation.googleapis.com"] }}"#
            ))
        };
        let good = far(
            r#"{ "addr": "0.0.0.0:443", "proxy_protocol": "v2", "trusted_proxies": ["10.30.0.0/16"], "proxy_header_wait_s": 60 }"#,
        );
        assert!(pair(&edge, &good).is_empty(), "{:?}", pair(&edge, &good));
        let short = far(
            r#"{ "addr": "10.20.0.5:443", "proxy_protocol": "v2", "trusted_proxies": ["10.30.0.0/16"], "proxy_header_wait_s": 30 }"#,
        );
        assert!(pair(&edge, &short)[0].contains("must be shorter"));
        let unset = far(
            r#"{ "addr": "10.20.0.5:443", "proxy_protocol": "v2", "trusted_proxies": ["10.30.0.0/16"] }"#,
        );
        assert!(pair(&edge, &unset)[0].contains("after hello_ms (10000 ms)"));
        let plain = far(r#""10.20.0.5:443""#);
        assert!(pair(&edge, &plain)[0].contains("takes no PROXY header"));
        let elsewhere = far(r#""10.20.0.5:8443""#);
        assert!(pair(&edge, &elsewhere)[0].contains("no listener"));
    }

    #[test]
    fn a_pool_may_name_its_far_relay() {
        let edge = config(
            r#"{ "pools": [{ "upstream": "far.example.com:443", "size": 4, "max_idle_s": 30 }],
                 "allow": [{ "name": "a.example.com", "upstream": "FAR.example.com:443", "send_proxy": "v2" }] }"#,
        );
        assert!(warnings(&edge).is_empty(), "{:?}", warnings(&edge));
        let far = config(
            r#"{ "listen": [{ "addr": "10.20.0.5:443", "proxy_protocol": "v2", "trusted_proxies": ["10.30.0.0/16"], "proxy_header_wait_s": 60 }],
                 "allow": ["a.example.com"] }"#,
        );
        assert!(pair(&edge, &far).is_empty(), "{:?}", pair(&edge, &far));
    }
}
