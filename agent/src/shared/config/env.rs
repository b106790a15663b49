//! Configuration from `HOSTWATCH_*` environment variables, laid over a parsed TOML file.
//!
//! The design's contract: every key can be given as `HOSTWATCH_` plus the key in capitals, a key
//! in a table joined with `_` (`HOSTWATCH_FILES_PATHS`), lists comma-separated, tables of tags as
//! `k=v,k=v`; the environment wins over the file. The variables come in as an iterator, never from
//! the process environment directly, so tests never touch global state. Agent and collector both
//! use this module; each passes its own table of keys.

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// A string, taken as it is (durations and paths too: the file's deserializer checks them).
    Str,
    /// An integer.
    Int,
    /// `true` or `false` (also `1`/`0`, `yes`/`no`).
    Bool,
    /// `a,b,c`: a list of strings; empty items are dropped.
    List,
    /// `k=v,k=v`: a table of strings.
    Map,
}

/// One configuration key that the environment may set.
#[derive(Debug, Clone, Copy)]
pub struct EnvKey {
    /// The variable, `HOSTWATCH_FILES_PATHS`.
    pub var: &'static str,
    /// The key's path in the file, `["files", "paths"]`.
    pub path: &'static [&'static str],
    pub kind: EnvKind,
}

/// What the environment did to the configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Variables that set a key, in the order of the key table.
    pub set: Vec<&'static str>,
    /// `HOSTWATCH_*` variables that are neither a key nor otherwise known: worth a warning, since
    /// a misspelt variable would otherwise be ignored without a word.
    pub unknown: Vec<String>,
}

/// A variable whose value could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {var}: {problem}")]
pub struct EnvError {
    pub var: String,
    pub problem: String,
}

/// The prefix every variable of hostwatch starts with.
pub const PREFIX: &str = "HOSTWATCH_";

/// The process environment as UTF-8 pairs, without panicking as `std::env::vars` does: a
/// `HOSTWATCH_*` value that is not UTF-8 is passed on lossily, so that validation names it; other
/// variables that are not UTF-8 are none of hostwatch's business and are skipped.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let v = match v.into_string() {
                Ok(v) => v,
                Err(v) if k.starts_with(PREFIX) => v.to_string_lossy().into_owned(),
                Err(_) => return None,
            };
            Some((k, v))
        })
        .collect()
}

/// Lays the variables in `vars` that name a key of `keys` over `table`. Variables in `also_known`
/// (read elsewhere, such as `HOSTWATCH_LOG`) are neither applied nor reported as unknown.
pub fn overlay(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    keys: &[EnvKey],
    also_known: &[&str],
) -> Result<Applied, EnvError> {
    let mut applied = Applied::default();
    let mut found: Vec<(&EnvKey, String)> = Vec::new();
    for (var, value) in vars {
        if !var.starts_with(PREFIX) {
            continue;
        }
        match keys.iter().find(|k| k.var == var) {
            Some(key) => found.push((key, value)),
            None if also_known.contains(&var.as_str()) => {}
            None => applied.unknown.push(var),
        }
    }
    // Apply in the order of the key table so that the outcome never depends on environment order.
    found.sort_by_key(|(key, _)| keys.iter().position(|k| k.var == key.var));
    for (key, value) in found {
        let parsed = parse(key, &value)?;
        set(table, key.path, parsed).map_err(|problem| EnvError { var: key.var.to_owned(), problem })?;
        applied.set.push(key.var);
    }
    applied.unknown.sort();
    Ok(applied)
}

fn parse(key: &EnvKey, value: &str) -> Result<toml::Value, EnvError> {
    let err = |problem: String| EnvError { var: key.var.to_owned(), problem };
    Ok(match key.kind {
        EnvKind::Str => toml::Value::String(value.to_owned()),
        EnvKind::Int => toml::Value::Integer(
            value.trim().parse().map_err(|_| err(format!("{value:?} is not an integer")))?,
        ),
        EnvKind::Bool => toml::Value::Boolean(match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(err(format!("{value:?} is not true or false"))),
        }),
        EnvKind::List => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        EnvKind::Map => toml::Value::Table(
            pairs(value).map_err(err)?.into_iter().map(|(k, v)| (k, toml::Value::String(v))).collect(),
        ),
    })
}

/// `k=v,k=v` as a map (blank items skipped, keys and values trimmed).
pub fn pairs(value: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| format!("{item:?} has no '=' (expected k=v,k=v)"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{item:?} has an empty key (expected k=v,k=v)"));
        }
        out.insert(k.to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("key with an empty path".to_owned());
    };
    let mut t = table;
    for p in parents {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("the file sets `{p}` to something that is not a table")),
        };
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[EnvKey] = &[
        EnvKey { var: "HOSTWATCH_SERVER", path: &["server"], kind: EnvKind::Str },
        EnvKey { var: "HOSTWATCH_TAGS", path: &["tags"], kind: EnvKind::Map },
        EnvKey { var: "HOSTWATCH_FILES_PATHS", path: &["files", "paths"], kind: EnvKind::List },
        EnvKey { var: "HOSTWATCH_MAX", path: &["max"], kind: EnvKind::Int },
    ];

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn environment_wins_and_types_follow_the_key() {
        let mut t: toml::Table =
            toml::from_str("server = \"http://file\"\n[files]\nexclude = [\"x\"]\n").unwrap();
        let applied = overlay(
            &mut t,
            vars(&[
                ("HOSTWATCH_SERVER", "http://env"),
                ("HOSTWATCH_TAGS", "role=web, env = prod"),
                ("HOSTWATCH_FILES_PATHS", "/etc,,/usr/bin"),
                ("HOSTWATCH_MAX", "42"),
                ("PATH", "/bin"),
            ]),
            KEYS,
            &[],
        )
        .unwrap();
        assert_eq!(t["server"].as_str(), Some("http://env"));
        assert_eq!(t["tags"]["role"].as_str(), Some("web"));
        assert_eq!(t["tags"]["env"].as_str(), Some("prod"));
        let paths: Vec<_> =
            t["files"]["paths"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(paths, ["/etc", "/usr/bin"]);
        assert_eq!(t["files"]["exclude"].as_array().unwrap().len(), 1, "the file's sibling key stays");
        assert_eq!(t["max"].as_integer(), Some(42));
        assert_eq!(
            applied.set,
            ["HOSTWATCH_SERVER", "HOSTWATCH_TAGS", "HOSTWATCH_FILES_PATHS", "HOSTWATCH_MAX"]
        );
        assert!(applied.unknown.is_empty());
    }

    #[test]
    fn unknown_variables_are_reported_but_known_ones_are_not() {
        let mut t = toml::Table::new();
        let applied = overlay(
            &mut t,
            vars(&[("HOSTWATCH_SERVRE", "x"), ("HOSTWATCH_LOG", "debug")]),
            KEYS,
            &["HOSTWATCH_LOG"],
        )
        .unwrap();
        assert_eq!(applied.unknown, ["HOSTWATCH_SERVRE"]);
        assert!(t.is_empty());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let mut t = toml::Table::new();
        let e = overlay(&mut t, vars(&[("HOSTWATCH_TAGS", "role")]), KEYS, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable HOSTWATCH_TAGS: \"role\" has no '=' (expected k=v,k=v)"
        );
        let e = overlay(&mut t, vars(&[("HOSTWATCH_MAX", "many")]), KEYS, &[]).unwrap_err();
        assert_eq!(e.var, "HOSTWATCH_MAX");
        let mut t: toml::Table = toml::from_str("files = 3").unwrap();
        let e = overlay(&mut t, vars(&[("HOSTWATCH_FILES_PATHS", "/etc")]), KEYS, &[]).unwrap_err();
        assert!(e.problem.contains("`files`"), "{e}");
    }
}
