//! The users of a CONNECT listener: an htpasswd-style file (`user:hash` lines) with bcrypt
//! (`htpasswd -B`) or argon2 hashes, and the `Proxy-Authorization: Basic` check against it.
//! Plain, crypt and MD5 entries are refused when the file is read: a leaked file must not
//! give the passwords away. Pure, but for the hash functions' work.

use crate::config::{Accept, Config};
use base64::Engine;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a users file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    /// A line that is not `user:hash`.
    #[error("line {line}: expected user:hash, as `htpasswd -B` writes")]
    Malformed {
        /// 1-based.
        line: usize,
    },
    /// A hash that is neither bcrypt nor argon2.
    #[error(
        "line {line}: {user}'s password is {kind}; only bcrypt (htpasswd -B) and argon2 hashes are accepted"
    )]
    WeakHash {
        /// 1-based.
        line: usize,
        /// Whose.
        user: String,
        /// What it is, in words.
        kind: &'static str,
    },
    /// The same user twice.
    #[error("line {line}: {user} is listed twice")]
    Duplicate {
        /// 1-based.
        line: usize,
        /// Who.
        user: String,
    },
    /// No user at all: every request would be refused.
    #[error("no user in it: every request would be refused")]
    Empty,
}

/// A validated users file.
#[derive(Clone, PartialEq, Eq)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.hashes.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

/// What a request's credentials come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A known user with the right password.
    User(String),
    /// No `Proxy-Authorization` header.
    Missing,
    /// A header that is not `Basic` with base64 of `user:password`.
    Malformed,
    /// An unknown user or a wrong password (the two are not told apart).
    Wrong,
}

impl Verdict {
    /// The stable detail word of a refusal.
    pub fn detail(&self) -> &'static str {
        match self {
            Verdict::User(_) => "ok",
            Verdict::Missing => "missing",
            Verdict::Malformed => "malformed",
            Verdict::Wrong => "wrong",
        }
    }
}

impl Users {
    /// Reads an htpasswd-style text: `user:hash` lines, `#` comments and blank lines.
    pub fn parse(text: &str) -> Result<Users, UsersError> {
        let mut hashes = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (user, hash) = entry
                .split_once(':')
                .filter(|(user, hash)| !user.is_empty() && !hash.is_empty())
                .ok_or(UsersError::Malformed { line })?;
            if let Some(kind) = weakness(hash) {
                return Err(UsersError::WeakHash {
                    line,
                    user: user.to_owned(),
                    kind,
                });
            }
            if hashes.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(UsersError::Duplicate {
                    line,
                    user: user.to_owned(),
                });
            }
        }
        if hashes.is_empty() {
            return Err(UsersError::Empty);
        }
        Ok(Users { hashes })
    }

    /// Checks a `Proxy-Authorization` header's value. Costs a hash's work (milliseconds, by
    /// design) for a known user; the caller runs it off the event loop.
    pub fn verify(&self, authorization: Option<&str>) -> Verdict {
        let Some(value) = authorization else {
            return Verdict::Missing;
        };
        let Some((user, password)) = basic(value) else {
            return Verdict::Malformed;
        };
        let Some(hash) = self.hashes.get(&user) else {
            return Verdict::Wrong;
        };
        let right = if hash.starts_with("$argon2") {
            use argon2::password_hash::PasswordVerifier;
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        } else {
            bcrypt::verify(&password, hash).unwrap_or(false)
        };
        match right {
            true => Verdict::User(user),
            false => Verdict::Wrong,
        }
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Never true for a parsed file.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// The largest users file read: a million bytes is some ten thousand users.
const MAX_FILE: u64 = 1 << 20;
/// Credentials remembered once verified, per listener: a hash's deliberate cost is paid
/// once per client and password, not once per connection. Past this many the memory is
/// cleared and starts again.
const REMEMBERED: usize = 1024;

/// Verifications running at once, per listener: a flood of wrong credentials takes these
/// threads of the blocking pool, never all of it, and waits its turn under the deadline.
pub const VERIFYING_AT_ONCE: usize = 2;

/// A CONNECT listener's users, with the credentials already verified against them.
#[derive(Debug)]
pub struct Accounts {
    users: Users,
    verified: Mutex<HashMap<String, String>>,
    /// Turns to verify ([`VERIFYING_AT_ONCE`]).
    pub turns: tokio::sync::Semaphore,
}

impl Accounts {
    /// Accounts for `users`, nothing verified yet.
    pub fn new(users: Users) -> Accounts {
        Accounts {
            users,
            verified: Mutex::default(),
            turns: tokio::sync::Semaphore::new(VERIFYING_AT_ONCE),
        }
    }

    /// The user of credentials verified before, without a hash's work.
    pub fn remembered(&self, authorization: &str) -> Option<String> {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified.get(authorization).cloned()
    }

    /// [`Users::verify`], remembering credentials that pass. Costs a hash's work: run it
    /// off the event loop.
    pub fn verify(&self, authorization: Option<&str>) -> Verdict {
        let verdict = self.users.verify(authorization);
        if let (Verdict::User(user), Some(authorization)) = (&verdict, authorization) {
            let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.insert(authorization.to_owned(), user.clone());
        }
        verdict
    }
}

/// Reads and validates the users file of every CONNECT listener that names one, by the
/// listener's configured address; the error names the file.
pub fn load_all(config: &Config) -> Result<Vec<(SocketAddr, Arc<Accounts>)>, String> {
    let mut loaded = Vec::new();
    for listener in &config.listen {
        if let Accept::Connect(tunnel) = &listener.accept
            && let Some(path) = &tunnel.users_file
        {
            let users = load(path).map_err(|e| format!("{}: {e}", path.display()))?;
            loaded.push((listener.addr, Arc::new(Accounts::new(users))));
        }
    }
    Ok(loaded)
}

fn load(path: &Path) -> Result<Users, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    Users::parse(&text).map_err(|e| e.to_string())
}

/// Why a hash is refused, or `None` for bcrypt and argon2.
fn weakness(hash: &str) -> Option<&'static str> {
    let bcrypt = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p));
    let argon2 = ["$argon2id$", "$argon2i$", "$argon2d$"]
        .iter()
        .any(|p| hash.starts_with(p));
    match () {
        _ if bcrypt && hash.parse::<bcrypt::HashParts>().is_ok() => None,
        _ if argon2 && argon2::password_hash::phc::PasswordHash::new(hash).is_ok() => None,
        _ if bcrypt || argon2 => Some("a damaged bcrypt or argon2 hash"),
        _ if hash.starts_with("$apr1$") || hash.starts_with("$1$") => Some("an MD5 hash"),
        _ if hash.starts_with("{SHA}") => Some("an unsalted SHA-1 hash"),
        _ if hash.starts_with("$5$") || hash.starts_with("$6$") => Some("a SHA-crypt hash"),
        _ if hash.len() == 13 => Some("a DES crypt hash, or plain text"),
        _ => Some("plain text, or a hash of an unknown kind"),
    }
}

/// `Basic base64(user:password)` → both.
fn basic(value: &str) -> Option<(String, String)> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests;
