//! Metrics carried across an upgrade, on arbitrary text: the old relay's totals and this
//! relay's own exposition must never make the merge panic, carrying nothing must change
//! nothing, and carrying must never drop or add a line that is not a sample. Seeded with a
//! real exposition.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snirelay::telemetry::carried::Carried;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first half as the old relay's totals, the whole as this relay's own.
    let mut half = text.len() / 2;
    while !text.is_char_boundary(half) {
        half -= 1;
    }
    let carried = Carried::parse(&text[..half]);
    let merged = carried.apply(text);
    let unchanged: String = text.lines().map(|line| format!("{line}\n")).collect();
    assert_eq!(Carried::default().apply(text), unchanged);
    let comments = |s: &str| s.lines().filter(|l| l.starts_with('#')).count();
    assert_eq!(comments(&merged), comments(text));
});
