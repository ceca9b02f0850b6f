//! DNS host names as the relay accepts them, from a ClientHello or from rules.json.
//!
//! A `Hostname` is the one normal form every comparison uses: ASCII lowercase, no trailing
//! dot, letters/digits/hyphens only. Validating before matching is what stops a name such as
//! `evil.test\0.sandbox.googleapis.com` from ever reaching the wildcard matcher.

use std::fmt;

/// Why bytes are not a host name. Each variant's `word` is stable and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    /// Nothing, or only a dot.
    #[error("empty name")]
    Empty,
    /// Longer than 253 bytes once the optional trailing dot is removed.
    #[error("longer than 253 bytes")]
    TooLong,
    /// Two dots in a row, or a leading dot.
    #[error("empty label")]
    EmptyLabel,
    /// A label over 63 bytes.
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    /// A byte other than a letter, digit, hyphen or dot (including NUL and non-ASCII).
    #[error("byte 0x{0:02x} is not a letter, digit, hyphen or dot")]
    BadByte(u8),
    /// A label that starts or ends with a hyphen.
    #[error("label starts or ends with a hyphen")]
    Hyphen,
    /// All-numeric last label: an IPv4 literal such as `192.0.2.1`, never a DNS name.
    #[error("an IP address, not a host name")]
    IpLiteral,
}

impl HostnameError {
    /// The stable word logged as the rejection detail.
    pub fn word(self) -> &'static str {
        match self {
            Self::Empty => "empty_name",
            Self::TooLong => "name_too_long",
            Self::EmptyLabel => "empty_label",
            Self::LabelTooLong => "label_too_long",
            Self::BadByte(_) => "bad_character",
            Self::Hyphen => "bad_hyphen",
            Self::IpLiteral => "ip_literal",
        }
    }
}

/// A validated, normalised DNS host name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(Box<str>);

impl Hostname {
    /// Validates `raw` (one optional trailing dot allowed) and returns its normal form.
    pub fn parse(raw: &[u8]) -> Result<Self, HostnameError> {
        let name = raw.strip_suffix(b".").unwrap_or(raw);
        if name.is_empty() {
            return Err(HostnameError::Empty);
        }
        if name.len() > 253 {
            return Err(HostnameError::TooLong);
        }
        let mut last_label: &[u8] = &[];
        for label in name.split(|&b| b == b'.') {
            if label.is_empty() {
                return Err(HostnameError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(HostnameError::LabelTooLong);
            }
            if let Some(&bad) = label
                .iter()
                .find(|b| !(b.is_ascii_alphanumeric() || **b == b'-'))
            {
                return Err(HostnameError::BadByte(bad));
            }
            if label.starts_with(b"-") || label.ends_with(b"-") {
                return Err(HostnameError::Hyphen);
            }
            last_label = label;
        }
        if last_label.iter().all(u8::is_ascii_digit) {
            return Err(HostnameError::IpLiteral);
        }
        let lower: String = name
            .iter()
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
        Ok(Self(lower.into_boxed_str()))
    }

    /// The normal form: lowercase, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The strict suffixes of this name at label boundaries, longest first:
    /// `a.b.c` yields `b.c`, then `c`.
    pub fn parent_suffixes(&self) -> impl Iterator<Item = &str> {
        self.0
            .match_indices('.')
            .map(move |(dot, _)| &self.0[dot + 1..])
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for Hostname {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String, HostnameError> {
        Hostname::parse(s.as_bytes()).map(|h| h.as_str().to_owned())
    }

    #[test]
    fn normalises_case_and_one_trailing_dot() {
        assert_eq!(
            parse("Translation.GoogleAPIs.com.").unwrap(),
            "translation.googleapis.com"
        );
        assert_eq!(parse("a.b..").unwrap_err(), HostnameError::EmptyLabel);
    }

    #[test]
    fn rejects_every_invalid_shape() {
        assert_eq!(parse("").unwrap_err(), HostnameError::Empty);
        assert_eq!(parse(".").unwrap_err(), HostnameError::Empty);
        assert_eq!(parse(".a.com").unwrap_err(), HostnameError::EmptyLabel);
        assert_eq!(parse("a..com").unwrap_err(), HostnameError::EmptyLabel);
        assert_eq!(
            parse(&"a".repeat(64)).unwrap_err(),
            HostnameError::LabelTooLong
        );
        assert_eq!(parse("-a.com").unwrap_err(), HostnameError::Hyphen);
        assert_eq!(parse("a-.com").unwrap_err(), HostnameError::Hyphen);
        assert_eq!(parse("a_b.com").unwrap_err(), HostnameError::BadByte(b'_'));
        assert_eq!(parse("*.com").unwrap_err(), HostnameError::BadByte(b'*'));
        assert_eq!(parse("192.0.2.1").unwrap_err(), HostnameError::IpLiteral);
        assert_eq!(parse("::1").unwrap_err(), HostnameError::BadByte(b':'));
        assert_eq!(
            Hostname::parse(b"evil.test\0.sandbox.googleapis.com").unwrap_err(),
            HostnameError::BadByte(0)
        );
        assert_eq!(
            Hostname::parse("caf\u{e9}.com".as_bytes()).unwrap_err(),
            HostnameError::BadByte(0xc3)
        );
    }

    #[test]
    fn length_limits_are_exact() {
        let label = "a".repeat(63);
        let name_253 = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(name_253.len(), 253);
        assert!(parse(&name_253).is_ok());
        assert!(parse(&format!("{name_253}.")).is_ok());
        assert_eq!(
            parse(&format!("{name_253}b")).unwrap_err(),
            HostnameError::TooLong
        );
    }

    #[test]
    fn parent_suffixes_are_longest_first() {
        let h: Hostname = "a.b.c".parse().unwrap();
        assert_eq!(h.parent_suffixes().collect::<Vec<_>>(), ["b.c", "c"]);
    }
}
