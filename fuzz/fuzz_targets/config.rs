//! rules.json loading on arbitrary text: a valid config or a positioned error, never a
//! panic, and a valid config's rules must answer lookups for their own names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snirelay::config::{Config, ConfigError};
use snirelay::rules::Pattern;
use std::path::Path;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.json")) {
        Ok(config) => {
            for rule in config.rules.iter() {
                if let Pattern::Exact(name) = &rule.pattern {
                    assert_eq!(config.rules.find(name).map(|r| &r.pattern), Some(&rule.pattern));
                }
            }
        }
        Err(ConfigError::Invalid { line, column, .. }) => assert!(line >= 1 && column >= 1),
        Err(ConfigError::Read { .. }) => unreachable!("parse reads no file"),
    }
});
