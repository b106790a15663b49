//! Which workload a host belongs to: the baseline whose selector matches the most of its tags.

use std::collections::BTreeMap;

use super::BaselineSet;

/// The outcome of selecting a host's workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// No baseline's selector matches: a no_baseline finding.
    None,
    /// Exactly one baseline matches best.
    One(String),
    /// Several match with the same number of keys: an ambiguous_workload finding, not a silent pick.
    Ambiguous(Vec<String>),
}

impl BaselineSet {
    /// Selects by tags. A selector matches when each of its keys is a tag with that value; an empty
    /// selector matches every host with the lowest precedence; a baseline without a selector is a
    /// library and selects nothing.
    pub fn select(&self, tags: &BTreeMap<String, String>) -> Selection {
        let mut best: Option<usize> = None;
        let mut names = Vec::new();
        for b in self.iter() {
            let Some(sel) = &b.selector else { continue };
            if !sel.iter().all(|(k, v)| tags.get(k) == Some(v)) {
                continue;
            }
            match best {
                Some(n) if sel.len() < n => {}
                Some(n) if sel.len() == n => names.push(b.name.clone()),
                _ => {
                    best = Some(sel.len());
                    names = vec![b.name.clone()];
                }
            }
        }
        match names.len() {
            0 => Selection::None,
            1 => Selection::One(names.remove(0)),
            _ => Selection::Ambiguous(names),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::parse;

    fn set(srcs: &[&str]) -> BaselineSet {
        BaselineSet::new(srcs.iter().map(|s| parse("t.toml", s).unwrap()))
    }

    fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn most_keys_win_and_ties_are_ambiguous() {
        let s = set(&[
            "name = \"all\"\nselector = {}\n",
            "name = \"web\"\nselector = { role = \"web\" }\n",
            "name = \"web-prod\"\nselector = { role = \"web\", env = \"prod\" }\n",
            "name = \"eu\"\nselector = { region = \"eu\" }\n",
            "name = \"lib\"\n",
        ]);
        assert_eq!(s.select(&tags(&[("role", "web")])), Selection::One("web".into()));
        assert_eq!(s.select(&tags(&[("role", "web"), ("env", "prod")])), Selection::One("web-prod".into()));
        assert_eq!(s.select(&tags(&[("role", "db")])), Selection::One("all".into()));
        assert_eq!(
            s.select(&tags(&[("role", "web"), ("region", "eu")])),
            Selection::Ambiguous(vec!["eu".into(), "web".into()])
        );
        let no_default = set(&["name = \"web\"\nselector = { role = \"web\" }\n", "name = \"lib\"\n"]);
        assert_eq!(no_default.select(&tags(&[("role", "db")])), Selection::None);
        assert_eq!(no_default.select(&tags(&[])), Selection::None, "a library selects nothing");
    }
}
