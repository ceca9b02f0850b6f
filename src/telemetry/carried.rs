//! Metrics that carry on across an upgrade: the old relay hands over its totals as
//! OpenMetrics text, and every counter and histogram this relay exposes is its own count
//! plus those, series by series; series only the old relay had are shown as they were.
//! So no counter goes back at an upgrade, and nothing is counted twice: a handed-over
//! connection is counted where it ends, its bytes where they are written. Gauges are this
//! relay's own (the handed-over connections are live here now). Pure text in, text out.

use std::collections::HashMap;

/// The totals of the relay this one replaced, by family, then by series.
#[derive(Debug, Default)]
pub struct Carried {
    /// Per cumulative family, in the order given: its series (name and labels) and values.
    families: Vec<(String, Vec<(String, String)>)>,
    by_series: HashMap<String, String>,
}

/// Families whose values only grow, so they add up across processes.
fn cumulative(kind: &str) -> bool {
    matches!(kind, "counter" | "histogram")
}

/// The family a `# HELP`, `# TYPE` or `# UNIT` line is about, and the rest of the line.
fn described(line: &str) -> Option<(&str, &str)> {
    let rest = ["# HELP ", "# TYPE ", "# UNIT "]
        .iter()
        .find_map(|prefix| line.strip_prefix(prefix))?;
    Some(rest.split_once(' ').unwrap_or((rest, "")))
}

/// A sample line's series (name and labels) and its value.
fn sample(line: &str) -> Option<(&str, &str)> {
    line.rsplit_once(' ')
}

/// `a + b`, as integers where both are.
fn add(a: &str, b: &str) -> Option<String> {
    if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
        return Some(a.saturating_add(b).to_string());
    }
    let sum = a.parse::<f64>().ok()? + b.parse::<f64>().ok()?;
    Some(format!("{sum:?}"))
}

impl Carried {
    /// The cumulative series in an OpenMetrics exposition.
    pub fn parse(text: &str) -> Carried {
        let mut carried = Carried::default();
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some((family, rest)) = described(line) {
                if line.starts_with("# TYPE ") {
                    current = cumulative(rest).then(|| {
                        carried.families.push((family.to_owned(), Vec::new()));
                        carried.families.len() - 1
                    });
                }
                continue;
            }
            if line.starts_with('#') {
                current = None;
                continue;
            }
            if let (Some(index), Some((series, value))) = (current, sample(line)) {
                carried.families[index]
                    .1
                    .push((series.to_owned(), value.to_owned()));
                carried
                    .by_series
                    .insert(series.to_owned(), value.to_owned());
            }
        }
        carried
    }

    /// `own` (an OpenMetrics exposition) with the carried totals added in.
    pub fn apply(&self, own: &str) -> String {
        let mut out = String::with_capacity(own.len() + own.len() / 4);
        // The cumulative family being written, and the series of it this relay has.
        let mut current: Option<(&str, Vec<&str>)> = None;
        let flush = |out: &mut String, current: &mut Option<(&str, Vec<&str>)>| {
            let Some((family, seen)) = current.take() else {
                return;
            };
            let Some((_, series)) = self.families.iter().find(|(name, _)| name == family) else {
                return;
            };
            for (name, value) in series {
                if !seen.contains(&name.as_str()) {
                    out.push_str(&format!("{name} {value}\n"));
                }
            }
        };
        for line in own.lines() {
            if let Some((family, rest)) = described(line) {
                if current.as_ref().is_some_and(|(name, _)| *name != family) {
                    flush(&mut out, &mut current);
                }
                if line.starts_with("# TYPE ") && cumulative(rest) {
                    current = Some((family, Vec::new()));
                }
            } else if line.starts_with('#') {
                flush(&mut out, &mut current);
            } else if let (Some((_, seen)), Some((series, value))) = (&mut current, sample(line))
                && let Some(before) = self.by_series.get(series)
            {
                seen.push(series);
                if let Some(sum) = add(value, before) {
                    out.push_str(&format!("{series} {sum}\n"));
                    continue;
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        flush(&mut out, &mut current);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "\
# HELP r_connections Connections.
# TYPE r_connections counter
r_connections_total{outcome=\"forwarded\"} 5
r_connections_total{outcome=\"refused\"} 2
# HELP r_active Open now.
# TYPE r_active gauge
r_active 7
# HELP r_hello_seconds Hello time.
# TYPE r_hello_seconds histogram
r_hello_seconds_sum 0.5
r_hello_seconds_count 4
r_hello_seconds_bucket{le=\"0.1\"} 3
r_hello_seconds_bucket{le=\"+Inf\"} 4
# EOF
";

    #[test]
    fn counters_and_histograms_add_up_and_gauges_are_this_relays_own() {
        let own = "\
# HELP r_connections Connections.
# TYPE r_connections counter
r_connections_total{outcome=\"forwarded\"} 1
# HELP r_active Open now.
# TYPE r_active gauge
r_active 3
# HELP r_hello_seconds Hello time.
# TYPE r_hello_seconds histogram
r_hello_seconds_sum 0.25
r_hello_seconds_count 1
r_hello_seconds_bucket{le=\"0.1\"} 1
r_hello_seconds_bucket{le=\"+Inf\"} 1
# EOF
";
        let want = "\
# HELP r_connections Connections.
# TYPE r_connections counter
r_connections_total{outcome=\"forwarded\"} 6
r_connections_total{outcome=\"refused\"} 2
# HELP r_active Open now.
# TYPE r_active gauge
r_active 3
# HELP r_hello_seconds Hello time.
# TYPE r_hello_seconds histogram
r_hello_seconds_sum 0.75
r_hello_seconds_count 5
r_hello_seconds_bucket{le=\"0.1\"} 4
r_hello_seconds_bucket{le=\"+Inf\"} 5
# EOF
";
        assert_eq!(Carried::parse(OLD).apply(own), want);
    }

    #[test]
    fn carried_twice_is_the_sum_of_three_and_nothing_carried_changes_nothing() {
        let first = Carried::parse(OLD).apply(OLD);
        assert!(first.contains("r_connections_total{outcome=\"forwarded\"} 10\n"));
        let second = Carried::parse(&first).apply(OLD);
        assert!(second.contains("r_connections_total{outcome=\"forwarded\"} 15\n"));
        assert!(second.contains("r_active 7\n"));
        assert_eq!(Carried::default().apply(OLD), OLD);
        assert_eq!(Carried::parse("").apply(OLD), OLD);
    }

    #[test]
    fn a_real_exposition_carried_onto_itself_doubles_every_count_and_keeps_its_gauges() {
        let real = include_str!("../../tests/fixtures/metrics/openmetrics.txt");
        let doubled = Carried::parse(real).apply(real);
        assert_eq!(doubled.lines().count(), real.lines().count());
        let mut kind = "";
        for (was, now) in real.lines().zip(doubled.lines()) {
            if let Some(rest) = was.strip_prefix("# TYPE ") {
                kind = rest.rsplit(' ').next().unwrap();
            }
            let (Some((series, a)), Some((same, b))) = (sample(was), sample(now)) else {
                continue;
            };
            if was.starts_with('#') {
                assert_eq!(was, now);
                continue;
            }
            assert_eq!(series, same);
            let (a, b) = (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap());
            let want = if cumulative(kind) { a * 2.0 } else { a };
            assert_eq!(b, want, "{kind} {series}");
        }
    }

    #[test]
    fn a_family_the_new_relay_lacks_is_dropped_and_bad_values_are_left_alone() {
        let own = "# HELP r_new New.\n# TYPE r_new counter\nr_new_total 1\n# EOF\n";
        assert_eq!(Carried::parse(OLD).apply(own), own);
        let odd = "# TYPE r_connections counter\nr_connections_total{outcome=\"forwarded\"} NaNx\n# EOF\n";
        let kept = Carried::parse(OLD).apply(odd);
        assert!(kept.contains("NaNx"));
        assert_eq!(kept.matches("outcome=\"forwarded\"").count(), 1, "{kept}");
    }
}
