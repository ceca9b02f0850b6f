use super::*;

fn hex_list(text: &str) -> Vec<u16> {
    text.split(',')
        .map(|h| u16::from_str_radix(h, 16).unwrap())
        .collect()
}

fn signature_body(list: &str) -> Vec<u8> {
    let values = hex_list(list);
    let mut body = ((values.len() * 2) as u16).to_be_bytes().to_vec();
    for v in values {
        body.extend_from_slice(&v.to_be_bytes());
    }
    body
}

fn sorted(mut values: Vec<u16>) -> Vec<u16> {
    values.sort_unstable();
    values
}

/// The example of FoxIO's JA4 technical details (v0.18.2), as the hello offered it.
const CIPHERS: &str = "1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035";
const EXTENSIONS: &str =
    "001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015";
const SIGNATURES: &str = "0403,0804,0401,0503,0805,0501,0806,0601";

/// A TLS 1.3 hello with a name and ALPN h2, as both published examples are.
fn h2_hello<'a>(ciphers: &'a [u16], extensions: &'a [u16], signatures: &'a [u8]) -> Offered<'a> {
    Offered {
        version: 0x0304,
        sni: true,
        ciphers,
        extensions,
        alpn: Some(b"h2"),
        signature_algorithms: Some(signatures),
    }
}

#[test]
fn the_published_example_has_the_published_fingerprint() {
    let (ciphers, extensions) = (hex_list(CIPHERS), sorted(hex_list(EXTENSIONS)));
    let signatures = signature_body(SIGNATURES);
    let offered = h2_hello(&ciphers, &extensions, &signatures);
    assert_eq!(
        fingerprint(&offered).as_str(),
        "t13d1516h2_8daaf6152771_e5627efa2ab1"
    );
    // Without signature algorithms the list ends without an underscore (published too).
    let without = Offered {
        signature_algorithms: None,
        ..offered
    };
    assert_eq!(&fingerprint(&without).as_str()[24..], "6d807ffa2a79");
    // GREASE anywhere changes nothing.
    let mut greased = ciphers.clone();
    greased.insert(0, 0x0a0a);
    let mut greased_ext = extensions.clone();
    greased_ext.push(0xfafa);
    let greased = Offered {
        ciphers: &greased,
        extensions: &greased_ext,
        ..offered
    };
    assert_eq!(fingerprint(&greased), fingerprint(&offered));
}

/// A Chrome 143 hello as a fingerprinting service reported it (ja4 and ja4_ro).
#[test]
fn a_published_chrome_hello_has_its_fingerprint() {
    let ciphers = hex_list(CIPHERS);
    let extensions = sorted(hex_list(
        "002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b",
    ));
    let signatures = signature_body(SIGNATURES);
    let offered = h2_hello(&ciphers, &extensions, &signatures);
    assert_eq!(
        fingerprint(&offered).as_str(),
        "t13d1516h2_8daaf6152771_d8a2da3f94cd"
    );
}

#[test]
fn the_first_part_says_version_name_counts_and_alpn() {
    let none: [u16; 0] = [];
    let base = Offered {
        version: 0x0303,
        sni: false,
        ciphers: &none,
        extensions: &none,
        alpn: None,
        signature_algorithms: None,
    };
    assert_eq!(
        fingerprint(&base).as_str(),
        "t12i000000_000000000000_000000000000"
    );
    for (alpn, ends) in [
        (&b"http/1.1"[..], "h1"),
        (b"h2", "h2"),
        (b"x", "xx"),
        (b"\xabh2", "a2"),
        (b"h2\x00", "60"),
        (b"", "00"),
    ] {
        let with = Offered {
            alpn: Some(alpn),
            ..base
        };
        assert_eq!(&fingerprint(&with).as_str()[8..10], ends, "{alpn:?}");
    }
    for (version, code) in [(0x0304, "13"), (0x0300, "s3"), (0x7f1c, "00")] {
        let with = Offered { version, ..base };
        assert_eq!(&fingerprint(&with).as_str()[1..3], code);
    }
    let many: Vec<u16> = (1..=150).collect();
    let counted = Offered {
        ciphers: &many,
        extensions: &many,
        ..base
    };
    assert_eq!(&fingerprint(&counted).as_str()[4..8], "9999");
    assert!(is_grease(0x0a0a) && is_grease(0xfafa) && !is_grease(0x0a0b) && !is_grease(0x1a0a));
}
