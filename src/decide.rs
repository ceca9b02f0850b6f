//! What to do with a connection once its ClientHello is read. Pure: the rules and the hello
//! in, a decision out, with no socket in sight.

use crate::config::Mode;
use crate::hello::ClientHello;
use crate::hostname::Hostname;
use crate::outcome::Rejection;
use crate::rules::{Host, Route, Rules};

/// The verdict on one hello.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Forward to this route.
    Forward(Route<'a>),
    /// No rule allows the name, but monitor mode forwards it to the name itself: logged as
    /// `would_refuse`.
    WouldRefuse(Route<'a>),
    /// Refuse, for this reason.
    Refuse(Rejection),
}

/// Decides `hello` against `rules` in `mode`; names without a pinned upstream go to
/// `upstream_port`.
pub fn decide<'a>(
    rules: &'a Rules,
    hello: &ClientHello,
    upstream_port: u16,
    mode: Mode,
) -> Decision<'a> {
    decide_name(rules, &hello.sni, upstream_port, mode)
}

fn decide_name<'a>(rules: &'a Rules, name: &Hostname, port: u16, mode: Mode) -> Decision<'a> {
    match (rules.route(name, port), mode) {
        (Some(route), _) => Decision::Forward(route),
        (None, Mode::Enforce) => Decision::Refuse(Rejection::NotAllowed),
        // As if a rule allowed the name without a pinned upstream: the client chose the
        // host, so the destination policy applies to it.
        (None, Mode::Monitor) => Decision::WouldRefuse(Route {
            rule: None,
            host: Host::Name(name.clone()),
            port,
            pinned: false,
        }),
    }
}

/// Decides a CONNECT request for `host:port` against `rules` in `mode`: the port must be
/// among `ports` (in either mode: monitor mode learns names, not ports); the name is decided
/// as a hello's would be, a name without a pinned upstream going to the port asked for.
pub fn decide_connect<'a>(
    rules: &'a Rules,
    host: &Hostname,
    port: u16,
    ports: &[u16],
    mode: Mode,
) -> Decision<'a> {
    if !ports.contains(&port) {
        return Decision::Refuse(Rejection::PortNotAllowed);
    }
    decide_name(rules, host, port, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Host, Pattern, Rule};

    fn hello(sni: &str) -> ClientHello {
        ClientHello {
            sni: sni.parse().unwrap(),
            alpn: Vec::new(),
            versions: vec![0x0304],
            ech: false,
            len: 0,
        }
    }

    fn rules(list: &[(&str, Option<&str>)]) -> Rules {
        Rules::new(
            list.iter()
                .map(|(pattern, upstream)| {
                    Rule::new(
                        pattern.parse::<Pattern>().unwrap(),
                        upstream.map(|u| u.parse().unwrap()),
                        None,
                    )
                })
                .collect(),
        )
        .unwrap()
    }

    /// Where a routed name goes is `Rules::route`'s to say (and to test); `decide` only
    /// forwards it, in either mode.
    #[test]
    fn a_name_the_rules_route_is_forwarded_where_they_say_in_either_mode() {
        let rules = rules(&[("*.googleapis.com", Some("10.1.2.3:4443"))]);
        let name = hello("tts.googleapis.com");
        for mode in [Mode::Enforce, Mode::Monitor] {
            let Decision::Forward(route) = decide(&rules, &name, 443, mode) else {
                panic!("refused a routed name");
            };
            assert_eq!(Some(route), rules.route(&name.sni, 443));
        }
    }

    #[test]
    fn a_name_no_rule_allows_is_refused_as_not_allowed() {
        let rules = rules(&[("*.googleapis.com", None)]);
        // A wildcard does not cover the name it is written under.
        let Decision::Refuse(rejection) =
            decide(&rules, &hello("googleapis.com"), 443, Mode::Enforce)
        else {
            panic!("forwarded a name no rule allows");
        };
        assert_eq!(rejection.reason(), "not_allowed");
    }

    #[test]
    fn monitor_mode_forwards_a_name_no_rule_allows_to_itself() {
        let rules = rules(&[("*.googleapis.com", Some("10.1.2.3:4443"))]);
        let Decision::WouldRefuse(route) =
            decide(&rules, &hello("example.org"), 8443, Mode::Monitor)
        else {
            panic!("monitor mode did not forward");
        };
        assert_eq!(route.rule, None);
        assert_eq!(route.host, Host::Name("example.org".parse().unwrap()));
        assert_eq!((route.port, route.pinned), (8443, false));
        // An allowed name is an ordinary forward in either mode.
        assert!(matches!(
            decide(&rules, &hello("tts.googleapis.com"), 443, Mode::Monitor),
            Decision::Forward(_)
        ));
    }

    #[test]
    fn a_connect_request_needs_a_listed_port_in_either_mode_then_goes_where_it_asked() {
        let rules = rules(&[
            ("*.googleapis.com", None),
            ("tts.googleapis.com", Some("10.1.2.3:4443")),
        ]);
        let name = |s: &str| s.parse::<Hostname>().unwrap();
        for mode in [Mode::Enforce, Mode::Monitor] {
            let Decision::Refuse(rejection) =
                decide_connect(&rules, &name("a.googleapis.com"), 80, &[443, 8443], mode)
            else {
                panic!("a port not listed was let through");
            };
            assert_eq!(rejection.reason(), "port_not_allowed");
        }
        let Decision::Forward(route) = decide_connect(
            &rules,
            &name("a.googleapis.com"),
            8443,
            &[443, 8443],
            Mode::Enforce,
        ) else {
            panic!("refused an allowed name");
        };
        assert_eq!(
            (route.host.to_string(), route.port),
            ("a.googleapis.com".into(), 8443)
        );
        let Decision::Forward(route) = decide_connect(
            &rules,
            &name("tts.googleapis.com"),
            443,
            &[443],
            Mode::Enforce,
        ) else {
            panic!("refused a pinned name");
        };
        assert_eq!(
            (route.host.to_string(), route.port),
            ("10.1.2.3".into(), 4443)
        );
        assert!(matches!(
            decide_connect(&rules, &name("example.org"), 443, &[443], Mode::Enforce),
            Decision::Refuse(Rejection::NotAllowed)
        ));
        assert!(matches!(
            decide_connect(&rules, &name("example.org"), 443, &[443], Mode::Monitor),
            Decision::WouldRefuse(_)
        ));
    }
}
