//! `snirelay suggest`: from the relay's own log lines (text, as it logs by default, or
//! `--log-format json`), the names clients asked for,
//! grouped by registrable domain (the Public Suffix List, from the `psl` crate), with how
//! each was decided, and the rules that would allow the ones refused (or only monitored).
//! Pure but for reading: lines in, text out.

use crate::config::Config;
use crate::outcome::{FORWARDED, NOT_ALLOWED, UNLISTED, WOULD_REFUSE};
use crate::rules::{Pattern, Rules};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::io::BufRead;

/// Per decision word, how many connections.
type Decided = BTreeMap<String, u64>;

/// What the log lines say of each name.
#[derive(Debug, Default)]
pub struct Seen {
    /// Per name, per decision word, how many connections.
    decided: BTreeMap<String, Decided>,
    /// Names some rule allowed.
    allowed: BTreeSet<String>,
    /// Per rule (or name, where no rule allowed it), per JA4 fingerprint, how many
    /// connections: which client software asks for what.
    fingerprints: BTreeMap<String, BTreeMap<String, u64>>,
    /// Lines that were not connection lines with a name.
    pub skipped: u64,
    /// Connection lines with a name: the ones used.
    pub used: u64,
}

impl Seen {
    /// Reads log lines, text or JSON, counting each connection line by its name.
    pub fn read(&mut self, lines: impl BufRead) -> std::io::Result<()> {
        for line in lines.lines() {
            self.line(&line?);
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        let Some(fields) = json_fields(line).or_else(|| text_fields(line)) else {
            self.skipped += 1;
            return;
        };
        self.used += 1;
        let Fields {
            sni,
            outcome,
            reason,
            rule,
            ja4,
        } = fields;
        let name = sni.to_ascii_lowercase();
        let decision = match (outcome.as_str(), reason.as_str()) {
            (_, NOT_ALLOWED | WOULD_REFUSE) => reason.as_str(),
            (FORWARDED, _) => FORWARDED,
            _ => reason.as_str(),
        };
        let rule = rule.filter(|rule| !rule.is_empty() && rule != UNLISTED);
        if rule.is_some() {
            self.allowed.insert(name.clone());
        }
        if let Some(ja4) = ja4 {
            *self
                .fingerprints
                .entry(rule.unwrap_or_else(|| name.clone()))
                .or_default()
                .entry(ja4)
                .or_default() += 1;
        }
        *self
            .decided
            .entry(name)
            .or_default()
            .entry(decision.to_owned())
            .or_default() += 1;
    }
}

/// What a connection line says that `suggest` reads.
struct Fields {
    sni: String,
    outcome: String,
    reason: String,
    rule: Option<String>,
    ja4: Option<String>,
}

/// A `--log-format json` connection line's fields; `None` for any other line.
fn json_fields(line: &str) -> Option<Fields> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let field = |key: &str| value[key].as_str().map(str::to_owned);
    (field("message")? == "connection").then_some(())?;
    Some(Fields {
        sni: field("sni")?,
        outcome: field("outcome")?,
        reason: field("reason")?,
        rule: field("rule"),
        ja4: field("ja4"),
    })
}

/// A text connection line's fields (the relay's default format:
/// `... INFO snirelay::connection: connection client=... sni="a.example.com" ...`);
/// `None` for any other line. Values are bare words or quoted with `\"` escapes.
fn text_fields(line: &str) -> Option<Fields> {
    let (_, rest) = line.split_once(" snirelay::connection: connection ")?;
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    let mut rest = rest.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_owned(), &after[end..])
            }
        };
        fields.insert(key, value);
        rest = next.trim_start();
    }
    let mut take = |key| fields.remove(key);
    Some(Fields {
        sni: take("sni")?,
        outcome: take("outcome")?,
        reason: take("reason")?,
        rule: take("rule"),
        ja4: take("ja4"),
    })
}

/// The registrable domain of `name` (`translation.googleapis.com` → `googleapis.com`), or
/// the name itself when the list has none.
fn domain(name: &str) -> &str {
    psl::domain_str(name).unwrap_or(name)
}

/// Whether a wildcard under `parent` could be proposed: not a top-level domain, not a
/// public suffix (`*.com`, `*.appspot.com`).
fn wildcard_allowed(parent: &str) -> bool {
    parent.contains('.') && psl::suffix_str(parent) != Some(parent)
}

/// The patterns that would allow the names refused (`not_allowed`) or only monitored
/// (`would_refuse`): one wildcard where two or more share a parent under a registrable
/// domain something is already allowed in, exact names otherwise. `rules` are the running
/// rules, when known; names they already allow are left out.
pub fn propose(seen: &Seen, rules: Option<&Rules>) -> Vec<String> {
    let allowed_by_rules = |name: &str| {
        let Some(rules) = rules else { return false };
        name.parse::<crate::hostname::Hostname>()
            .is_ok_and(|n| rules.route(&n, 443).is_some())
    };
    let mut allowed_domains: BTreeSet<&str> = seen.allowed.iter().map(|n| domain(n)).collect();
    if let Some(rules) = rules {
        for rule in rules.iter() {
            allowed_domains.insert(domain(match &rule.pattern {
                Pattern::Exact(name) | Pattern::Wildcard(name) => name.as_str(),
                Pattern::Label(label) => label.parent(),
            }));
        }
    }
    let wanted: Vec<&str> = seen
        .decided
        .iter()
        .filter(|(name, decided)| {
            // Against the rules in force where they are given: the log may have seen a
            // name allowed that the rules no longer allow.
            (decided.contains_key(NOT_ALLOWED) || decided.contains_key(WOULD_REFUSE))
                && match rules {
                    Some(_) => !allowed_by_rules(name),
                    None => !seen.allowed.contains(*name),
                }
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in &wanted {
        if let Some((_, parent)) = name.split_once('.') {
            by_parent.entry(parent).or_default().push(name);
        }
    }
    let mut proposed: Vec<String> = Vec::new();
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    for (parent, names) in &by_parent {
        if names.len() >= 2 && wildcard_allowed(parent) && allowed_domains.contains(domain(parent))
        {
            proposed.push(format!("*.{parent}"));
            covered.extend(names.iter().copied());
        }
    }
    proposed.extend(
        wanted
            .iter()
            .filter(|n| !covered.contains(*n))
            .map(|n| (*n).to_owned()),
    );
    // The Public Suffix lookup runs once per name, not once per comparison.
    proposed.sort_by_cached_key(|p| (domain(p.trim_start_matches("*.")).to_owned(), p.clone()));
    proposed
}

/// The report: names by registrable domain with their decisions, then the proposal.
pub fn report(seen: &Seen, proposed: &[String]) -> String {
    let mut by_domain: BTreeMap<&str, Vec<(&String, &Decided)>> = BTreeMap::new();
    for (name, decided) in &seen.decided {
        by_domain
            .entry(domain(name))
            .or_default()
            .push((name, decided));
    }
    let mut out = String::new();
    for (domain, names) in by_domain {
        let _ = writeln!(out, "{domain}");
        for (name, decided) in names {
            let counts: Vec<String> = decided.iter().map(|(d, n)| format!("{n} {d}")).collect();
            let _ = writeln!(out, "  {name}: {}", counts.join(", "));
        }
    }
    if !seen.fingerprints.is_empty() {
        out.push_str("\nclient fingerprints (JA4), by rule (or name, where none allowed it):\n");
        for (rule, seen) in &seen.fingerprints {
            let mut by_count: Vec<(&String, &u64)> = seen.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let list: Vec<String> = by_count.iter().map(|(j, n)| format!("{j} ({n})")).collect();
            let _ = writeln!(out, "  {rule}: {}", list.join(", "));
        }
    }
    if proposed.is_empty() {
        out.push_str("\nnothing to add: every name seen is allowed\n");
    } else {
        out.push_str("\nproposed additions to allow:\n");
        for pattern in proposed {
            let _ = writeln!(out, "  {}", serde_json::Value::from(pattern.as_str()));
        }
    }
    out
}

/// `text` (a rules file) with `proposed` appended to its `allow`, validated as `check`
/// validates a file.
pub fn merge(text: &str, path: &std::path::Path, proposed: &[String]) -> Result<String, String> {
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let allow = value["allow"]
        .as_array_mut()
        .ok_or_else(|| format!("{}: no allow array to merge into", path.display()))?;
    allow.extend(proposed.iter().map(|p| serde_json::Value::from(p.as_str())));
    let merged = format!("{value:#}\n");
    Config::parse(&merged, path).map_err(|e| format!("the merged file would not load: {e}"))?;
    Ok(merged)
}

#[cfg(test)]
mod tests;
