//! Which rules file a command reads when `--config` is not given: `./rules.json` where
//! there is one (a checkout, the quick start), else the installed
//! `/etc/snirelay/rules.json`. Pure: whether a file exists is asked of the caller.

use std::path::{Path, PathBuf};

/// Where the packages install the rules.
pub const INSTALLED: &str = "/etc/snirelay/rules.json";
/// The rules file in the current directory.
pub const LOCAL: &str = "rules.json";

/// The rules file to read, and whether it is the installed one found by default (worth
/// saying: the operator did not name it).
pub fn choose(
    given: Option<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> Result<(PathBuf, bool), String> {
    if let Some(path) = given {
        return Ok((path, false));
    }
    if exists(Path::new(LOCAL)) {
        return Ok((PathBuf::from(LOCAL), false));
    }
    if exists(Path::new(INSTALLED)) {
        return Ok((PathBuf::from(INSTALLED), true));
    }
    Err(format!(
        "no rules file: neither ./{LOCAL} nor {INSTALLED} exists; name one with --config PATH"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_file_wins_then_the_local_one_then_the_installed_one() {
        let all = |_: &Path| true;
        let given = choose(Some("x.json".into()), all).unwrap();
        assert_eq!(given, (PathBuf::from("x.json"), false));
        assert_eq!(choose(None, all).unwrap(), (PathBuf::from(LOCAL), false));
        let installed_only = |p: &Path| p == Path::new(INSTALLED);
        assert_eq!(
            choose(None, installed_only).unwrap(),
            (PathBuf::from(INSTALLED), true)
        );
        let none = choose(None, |_| false).unwrap_err();
        assert!(
            none.contains("./rules.json") && none.contains(INSTALLED) && none.contains("--config"),
            "{none}"
        );
    }
}
