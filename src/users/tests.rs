use super::*;

/// A file `htpasswd -B` and the argon2 tool wrote: app1's password is secret1, app2's
/// secret2.
const REAL: &str = include_str!("../../tests/fixtures/users/valid");

fn basic(user_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

#[test]
fn bcrypt_and_argon2_users_are_checked_by_their_hash() {
    let users = Users::parse(REAL).unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(
        users.verify(Some(&basic("app1:secret1"))),
        Verdict::User("app1".into())
    );
    assert_eq!(
        users.verify(Some(&basic("app2:secret2"))),
        Verdict::User("app2".into())
    );
    assert_eq!(users.verify(Some(&basic("app1:secret2"))), Verdict::Wrong);
    assert_eq!(users.verify(Some(&basic("nobody:secret1"))), Verdict::Wrong);
    assert_eq!(users.verify(None), Verdict::Missing);
    for bad in ["Bearer abc", "Basic !!!", "Basic", &basic("no-colon")] {
        assert_eq!(users.verify(Some(bad)), Verdict::Malformed, "{bad}");
    }
    // The scheme's case and spaces around the token do not matter.
    let spaced = format!("  basic   {}", &basic("app1:secret1")[6..]);
    assert_eq!(users.verify(Some(&spaced)), Verdict::User("app1".into()));
}

#[test]
fn weak_or_broken_entries_are_refused_with_their_line() {
    // As htpasswd -m, -s, -p and -d write them.
    for (entry, kind) in [
        (
            "md5user:$apr1$/eXR.9h4$gmfzeqG7TYpaervX.xtAm.",
            "an MD5 hash",
        ),
        (
            "shauser:{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI=",
            "an unsalted SHA-1 hash",
        ),
        ("plain:x", "plain text, or a hash of an unknown kind"),
        ("des:rO0Kl1Gx5qfZ2", "a DES crypt hash, or plain text"),
        ("broken:$2y$05$short", "a damaged bcrypt or argon2 hash"),
    ] {
        let text = format!("# users\n\n{entry}\n");
        assert_eq!(
            Users::parse(&text),
            Err(UsersError::WeakHash {
                line: 3,
                user: entry.split(':').next().unwrap().into(),
                kind
            }),
            "{entry}"
        );
    }
    assert_eq!(
        Users::parse("app1\n"),
        Err(UsersError::Malformed { line: 1 })
    );
    assert_eq!(Users::parse(":x\n"), Err(UsersError::Malformed { line: 1 }));
    assert_eq!(Users::parse("# nobody\n"), Err(UsersError::Empty));
    let twice = format!(
        "{}\n{}",
        REAL.lines().nth(1).unwrap(),
        REAL.lines().nth(1).unwrap()
    );
    assert_eq!(
        Users::parse(&twice),
        Err(UsersError::Duplicate {
            line: 2,
            user: "app1".into()
        })
    );
    // The error says what to use instead.
    let said = Users::parse("plain:x").unwrap_err().to_string();
    assert!(
        said.contains("only bcrypt (htpasswd -B) and argon2"),
        "{said}"
    );
}
