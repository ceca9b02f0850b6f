//! What `snirelay check` says of client groups: who is in each, what each may reach and in
//! which mode, in the order they are tried, and the groups no client can ever reach. Pure.

use crate::config::{Accept, Config, Group, Mode};
use ipnet::IpNet;

/// The effective matrix: each group, in the order they are tried, with whom it takes, its
/// mode and the names it allows (its own, and how many shared).
pub fn summary(config: &Config) -> String {
    if config.groups.is_empty() {
        return String::new();
    }
    let mut text = String::from(
        "  groups, in the order a client is matched (the first that takes it decides; no group: client_denied):\n",
    );
    for group in &config.groups {
        let clients = match group.clients.is_empty() {
            true => "any address".to_owned(),
            false => list(group.clients.iter().map(IpNet::to_string)),
        };
        let users = match group.users.is_empty() {
            true => "any user".to_owned(),
            false => format!("users {}", group.users.join(", ")),
        };
        let mode = group.mode.map_or("the listener's mode", Mode::word);
        let own = list(group.own.iter().map(|r| r.pattern.to_string()));
        let shared = group.rules.len() - group.own.len();
        let replaced = list(
            group
                .own
                .iter()
                .filter(|r| config.rules.iter().any(|s| s.pattern == r.pattern))
                .map(|r| r.pattern.to_string()),
        );
        text.push_str(&format!(
            "    {}: {clients}, {users}; {mode}; allows {shared} shared rule(s) and its own: {}{}\n",
            group.name,
            if own.is_empty() { "none".to_owned() } else { own },
            if replaced.is_empty() {
                String::new()
            } else {
                format!(" (in place of the shared {replaced})")
            },
        ));
    }
    text
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// Groups no client can reach: one an earlier group always takes first, and one that asks
/// for users where no CONNECT listener checks any.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let users_checked = config
        .listen
        .iter()
        .any(|l| matches!(&l.accept, Accept::Connect(tunnel) if tunnel.users_file.is_some()));
    for (index, group) in config.groups.iter().enumerate() {
        if group.mode == Some(Mode::Monitor) {
            warnings.push(format!(
                "monitor mode for group {}: names its rules do not allow are forwarded (logged as would_refuse), not refused",
                group.name
            ));
        }
        if let Some(earlier) = config.groups[..index]
            .iter()
            .find(|earlier| covers(earlier, group))
        {
            warnings.push(format!(
                "group {} can never match: group {}, tried first, takes every client it would",
                group.name, earlier.name
            ));
        } else if !group.users.is_empty() && !users_checked {
            warnings.push(format!(
                "group {} names users, but no CONNECT listener has a users_file: it can never match",
                group.name
            ));
        }
    }
    warnings
}

/// Whether every client `later` takes, `earlier` takes too.
fn covers(earlier: &Group, later: &Group) -> bool {
    let networks = earlier.clients.is_empty()
        || (!later.clients.is_empty()
            && later
                .clients
                .iter()
                .all(|net| earlier.clients.iter().any(|wide| wide.contains(net))));
    let users = earlier.users.is_empty()
        || (!later.users.is_empty() && later.users.iter().all(|u| earlier.users.contains(u)));
    networks && users
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(groups: &str) -> Config {
        let text = format!(
            r#"{{"listen": ["127.0.0.1:443"], "allow": ["shared.example.com"], "groups": {groups}}}"#
        );
        Config::parse(&text, Path::new("t.json")).unwrap()
    }

    #[test]
    fn the_matrix_lists_each_group_in_order_with_whom_it_takes_and_what_it_allows() {
        let c = config(
            r#"[{"name": "tts", "clients": ["10.1.0.0/16"], "allow": ["tts.example.com"], "mode": "monitor"},
                {"name": "rest", "allow": []}]"#,
        );
        assert_eq!(
            summary(&c),
            "  groups, in the order a client is matched (the first that takes it decides; no group: client_denied):\n\
             \x20   tts: 10.1.0.0/16, any user; monitor; allows 1 shared rule(s) and its own: tts.example.com\n\
             \x20   rest: any address, any user; the listener's mode; allows 1 shared rule(s) and its own: none\n"
        );
        assert_eq!(summary(&config("[]")), "");
    }

    #[test]
    fn a_group_an_earlier_one_always_takes_first_is_named() {
        let c = config(
            r#"[{"name": "wide", "clients": ["10.0.0.0/8"], "allow": []},
                {"name": "narrow", "clients": ["10.1.0.0/16"], "allow": []},
                {"name": "other", "clients": ["10.1.0.0/16", "192.168.0.0/16"], "allow": []},
                {"name": "byuser", "users": ["app1"], "allow": []},
                {"name": "all", "allow": []},
                {"name": "after", "clients": ["172.16.0.0/12"], "allow": []}]"#,
        );
        assert_eq!(
            warnings(&c),
            [
                "group narrow can never match: group wide, tried first, takes every client it would",
                "group byuser names users, but no CONNECT listener has a users_file: it can never match",
                "group after can never match: group all, tried first, takes every client it would",
            ]
        );
    }
}
