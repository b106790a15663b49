//! Which tags a host is judged by: the one place that decides how far a host's own word on its
//! tags is trusted.
//!
//! Tags select a host's workload, so a host that could set them could pick the baseline that
//! explains what it runs. A host's tags are therefore, key by key:
//! 1. what the enroll secret that enrolled it assigns (`hostwatch secret create --tags`), always;
//! 2. else, for keys the collector's `[tags] from_agents` lists, what its latest report says;
//! 3. else, the first value it reported for the key, kept (first use): a later report can add
//!    a key the host did not have (its cloud's tags may come after it enrolled, from a slow
//!    metadata service), never change or drop one.
//!
//! What a host reports is kept beside (`reported_tags`) and shown where it differs.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

pub type Tags = BTreeMap<String, String>;

/// The keys whose values follow what agents report (`[tags] from_agents`): none by default,
/// some, or every key (`["*"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct TagPolicy {
    all: bool,
    keys: BTreeSet<String>,
}

impl TryFrom<Vec<String>> for TagPolicy {
    type Error = String;

    fn try_from(keys: Vec<String>) -> Result<Self, String> {
        let mut policy = TagPolicy::default();
        for k in keys {
            match k.as_str() {
                "*" => policy.all = true,
                "" => return Err("an empty tag key".to_owned()),
                _ => {
                    policy.keys.insert(k);
                }
            }
        }
        Ok(policy)
    }
}

impl TagPolicy {
    /// Every key follows the agents (`["*"]`): what dev mode uses, where the agent is the
    /// collector's own.
    pub fn trust_agents() -> TagPolicy {
        TagPolicy { all: true, keys: BTreeSet::new() }
    }

    fn follows(&self, key: &str) -> bool {
        self.all || self.keys.contains(key)
    }
}

/// The tags of a host enrolling: what it reports, under what its secret assigns.
pub fn at_enrollment(reported: &Tags, assigned: &Tags) -> Tags {
    let mut out = reported.clone();
    out.extend(assigned.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// The tags of a host after a report: see the module's rules. `held` are its tags before the
/// report.
pub fn after_report(policy: &TagPolicy, held: &Tags, reported: &Tags, assigned: &Tags) -> Tags {
    let mut out = Tags::new();
    // Held keys that follow neither the secret nor the agents stay; those that follow the agents
    // go unless reported again.
    for (k, v) in held {
        if !assigned.contains_key(k) && !policy.follows(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in reported {
        if !assigned.contains_key(k) && (policy.follows(k) || !held.contains_key(k)) {
            out.insert(k.clone(), v.clone());
        }
    }
    out.extend(assigned.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// The reported keys whose values the host is not judged by: for logs and `hostwatch host`.
pub fn overridden<'a>(effective: &Tags, reported: &'a Tags) -> Vec<(&'a str, &'a str)> {
    reported
        .iter()
        .filter(|(k, v)| effective.get(*k) != Some(*v))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_secret_assigns_over_what_the_host_says() {
        let t = at_enrollment(&tags(&[("role", "db"), ("team", "x")]), &tags(&[("role", "web")]));
        assert_eq!(t, tags(&[("role", "web"), ("team", "x")]));
    }

    #[test]
    fn by_default_a_host_cannot_change_or_drop_a_tag_it_had_only_add_one() {
        let policy = TagPolicy::default();
        let held = tags(&[("role", "web"), ("team", "x")]);
        let reported = tags(&[("role", "db"), ("env", "prod")]);
        let t = after_report(&policy, &held, &reported, &Tags::new());
        assert_eq!(
            t,
            tags(&[("env", "prod"), ("role", "web"), ("team", "x")]),
            "role kept, team kept, env added"
        );
        assert_eq!(overridden(&t, &reported), [("role", "db")]);
        // Once added, held like the rest.
        let later = after_report(&policy, &t, &tags(&[("env", "dev")]), &Tags::new());
        assert_eq!(later.get("env").map(String::as_str), Some("prod"));
    }

    #[test]
    fn keys_listed_follow_the_agent_and_the_secret_wins_over_everything() {
        let policy = TagPolicy::try_from(vec!["env".to_owned(), "role".to_owned()]).unwrap();
        let held = tags(&[("role", "web"), ("env", "staging"), ("team", "x")]);
        let assigned = tags(&[("role", "web")]);
        // role is the secret's; env follows the report; team is held.
        let t = after_report(&policy, &held, &tags(&[("role", "db"), ("env", "prod")]), &assigned);
        assert_eq!(t, tags(&[("env", "prod"), ("role", "web"), ("team", "x")]));
        // A key that follows the agent goes when the agent stops reporting it.
        let t = after_report(&policy, &t, &Tags::new(), &assigned);
        assert_eq!(t, tags(&[("role", "web"), ("team", "x")]));
        // "*": every key follows the agent.
        let all = TagPolicy::try_from(vec!["*".to_owned()]).unwrap();
        assert_eq!(after_report(&all, &held, &tags(&[("new", "1")]), &Tags::new()), tags(&[("new", "1")]));
        assert!(TagPolicy::try_from(vec![String::new()]).is_err());
    }
}
