//! What to do with a connection once its ClientHello is read. Pure: the rules and the hello
//! in, a decision out, with no socket in sight.

use crate::config::{Config, Group, Mode};
use crate::hello::ClientHello;
use crate::hostname::Hostname;
use crate::outcome::Rejection;
use crate::policy::client_allowed;
use crate::rules::{Host, Route, Rules};
use std::net::IpAddr;

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

/// What decides a client's connections: the rules and mode of the first group it belongs
/// to, or, in a file without groups, the file's. `Err(ClientDenied)` where there are groups
/// and it belongs to none. `user` is the proxy user a CONNECT listener verified, if any.
pub fn choose<'a>(
    config: &'a Config,
    client: IpAddr,
    user: Option<&str>,
    listener_mode: Option<Mode>,
) -> Result<Chosen<'a>, Rejection> {
    let mode = listener_mode.unwrap_or(config.mode);
    if config.groups.is_empty() {
        return Ok(Chosen {
            rules: &config.rules,
            mode,
            group: None,
        });
    }
    let group = config
        .groups
        .iter()
        .find(|group| belongs(group, client, user))
        .ok_or(Rejection::ClientDenied)?;
    Ok(Chosen {
        rules: &group.rules,
        mode: group.mode.unwrap_or(mode),
        group: Some(group),
    })
}

/// Whether `client` (with `user`) is in `group`: in one of its networks, where it lists
/// any, and one of its users, where it lists any.
pub fn belongs(group: &Group, client: IpAddr, user: Option<&str>) -> bool {
    (group.clients.is_empty() || client_allowed(client, &group.clients))
        && (group.users.is_empty() || user.is_some_and(|u| group.users.iter().any(|g| g == u)))
}

/// The rules and mode a client's connections are decided by.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'a> {
    /// What it may reach.
    pub rules: &'a Rules,
    /// What happens to a name its rules do not allow.
    pub mode: Mode,
    /// Its group, in a file with groups.
    pub group: Option<&'a Group>,
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
            ja4: None,
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

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.json")).unwrap()
    }

    #[test]
    fn the_first_group_a_client_belongs_to_decides_with_the_shared_names_and_its_own() {
        let c = config(
            r#"{"allow": ["oauth2.googleapis.com"], "mode": "enforce",
                "groups": [
                  {"name": "tts", "clients": ["10.1.0.0/16"], "allow": ["texttospeech.googleapis.com"]},
                  {"name": "app1", "users": ["app1"], "allow": ["translation.googleapis.com"], "mode": "monitor"},
                  {"name": "lab", "clients": ["10.1.2.0/24", "10.9.0.0/16"], "allow": []}
                ]}"#,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let name = |s: &str| s.parse::<Hostname>().unwrap();
        let tts = choose(&c, ip("10.1.2.3"), Some("app1"), None).unwrap();
        assert_eq!(
            tts.group.map(|g| &*g.name),
            Some("tts"),
            "the first that matches"
        );
        assert!(
            tts.rules
                .find(&name("texttospeech.googleapis.com"))
                .is_some()
        );
        assert!(tts.rules.find(&name("oauth2.googleapis.com")).is_some());
        assert!(
            tts.rules
                .find(&name("translation.googleapis.com"))
                .is_none()
        );
        assert_eq!(tts.mode, Mode::Enforce);
        // By user, wherever the client is; its own mode.
        let app1 = choose(&c, ip("192.0.2.7"), Some("app1"), None).unwrap();
        assert_eq!(
            (app1.group.map(|g| &*g.name), app1.mode),
            (Some("app1"), Mode::Monitor)
        );
        // An IPv4 client seen as IPv4-mapped IPv6 is the same client.
        let lab = choose(&c, ip("::ffff:10.9.0.1"), None, Some(Mode::Monitor)).unwrap();
        assert_eq!(
            (lab.group.map(|g| &*g.name), lab.mode),
            (Some("lab"), Mode::Monitor)
        );
        assert!(lab.rules.find(&name("oauth2.googleapis.com")).is_some());
        // In no group: refused, whoever it says it is.
        for (client, user) in [("192.0.2.7", None), ("192.0.2.7", Some("app2"))] {
            let Err(rejection) = choose(&c, ip(client), user, None) else {
                panic!("{client} {user:?} was let in");
            };
            assert_eq!(rejection.reason(), "client_denied");
        }
        // No groups: the file's rules and mode, the listener's over it.
        let plain = config(r#"{"allow": ["a.example.com"]}"#);
        let chosen = choose(&plain, ip("192.0.2.7"), None, Some(Mode::Monitor)).unwrap();
        assert!(chosen.group.is_none() && chosen.mode == Mode::Monitor);
    }

    #[test]
    fn a_groups_own_rule_replaces_the_shared_one_for_its_pattern() {
        let c = config(
            r#"{"allow": ["a.example.com", "b.example.com"],
                "groups": [{"name": "pinned", "clients": ["10.0.0.0/8"],
                            "allow": [{"name": "a.example.com", "upstream": "10.9.9.9:443"}]}]}"#,
        );
        let group = &c.groups[0];
        assert_eq!(group.rules.len(), 2);
        let a = group.rules.find(&"a.example.com".parse().unwrap()).unwrap();
        assert_eq!(a.upstream.as_ref().unwrap().to_string(), "10.9.9.9:443");
        assert!(
            c.rules
                .find(&"a.example.com".parse().unwrap())
                .unwrap()
                .upstream
                .is_none()
        );
    }
}
