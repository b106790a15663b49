//! Property tests of the contract's decoders: whatever an agent or a caller sends, decoding and
//! validating it never panics, what validates keeps the invariants the collector relies on, and
//! what validates survives a round trip unchanged. (The fuzz targets in `fuzz/` push the same
//! entry points further, for longer.)

#![allow(clippy::unwrap_used)]

use hostwatch_proto::v1::{self as proto, Validate};
use proptest::prelude::*;
use serde_json::Value;

/// A report every field of which is set: the seed that mutations start from.
fn sample_report() -> Value {
    let now = time::OffsetDateTime::now_utc();
    let mut p = proto::Process::new(42, 1, "nginx", 33, now);
    p.exe = Some("/usr/sbin/nginx".into());
    p.cmdline = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
    p.rss_bytes = Some(1 << 20);
    let report = proto::Report {
        session: 1,
        seq: 2,
        sent_at: now,
        host: proto::HostFacts::new("web-1", "machine-1"),
        agent: proto::AgentStatus::new("0.1.0", 10, now),
        snapshot: Some(proto::Snapshot {
            taken_at: now,
            processes: vec![p],
            listeners: vec![],
            connections: vec![],
        }),
        delta: None,
        lost: 0,
        goodbye: None,
    };
    serde_json::to_value(report).unwrap()
}

/// Any JSON value, strings with any characters (controls, bidi, escapes), numbers at the edges.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
        Just(Value::String("\u{202e}\u{1b}[2J\u{9b}\u{7f}".into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at the `pick`-th node (depth first) of `v` with `with`.
fn replace_nth(v: &mut Value, pick: &mut usize, with: &Value) -> bool {
    if *pick == 0 {
        *v = with.clone();
        return true;
    }
    *pick -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| replace_nth(x, pick, with)),
        Value::Object(o) => o.values_mut().any(|x| replace_nth(x, pick, with)),
        _ => false,
    }
}

/// Strings the collector shows or logs as names: never a control or invisible character once
/// validated.
fn names_are_clean(r: &proto::Report) {
    let clean = |s: &str| !s.chars().any(|c| c.is_control() || proto::invisible(c));
    assert!(clean(&r.host.hostname), "{:?}", r.host.hostname);
    for (k, v) in &r.host.tags {
        assert!(clean(k) && clean(v), "{k:?}={v:?}");
    }
    if let Some(s) = &r.snapshot {
        for p in &s.processes {
            assert!(clean(&p.name), "{:?}", p.name);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_report_decoder(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(r) = serde_json::from_slice::<proto::Report>(&bytes) {
            let _ = r.validate();
        }
        if let Ok(e) = serde_json::from_slice::<proto::EnrollRequest>(&bytes) {
            let _ = e.validate();
        }
    }

    #[test]
    fn a_report_with_any_field_replaced_decodes_validates_or_says_where(
        pick in 0usize..200,
        with in any_json(),
    ) {
        let mut v = sample_report();
        let mut n = pick;
        replace_nth(&mut v, &mut n, &with);
        let text = serde_json::to_vec(&v).unwrap();
        match serde_json::from_slice::<proto::Report>(&text) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(r) => match r.validate() {
                Err(e) => prop_assert!(!e.to_string().is_empty()),
                Ok(()) => {
                    names_are_clean(&r);
                    // What validates is what the collector stores and serves back: unchanged by a
                    // round trip.
                    let again: proto::Report = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
                    prop_assert_eq!(again, r);
                }
            },
        }
    }

    #[test]
    fn enrollments_with_any_hostname_or_tags_validate_only_clean(
        hostname in any::<String>(),
        key in any::<String>(),
        value in any::<String>(),
    ) {
        let now = time::OffsetDateTime::now_utc();
        let mut host = proto::HostFacts::new(hostname.clone(), "machine-1");
        host.tags.insert(key.clone(), value.clone());
        let req = proto::EnrollRequest {
            enroll_secret: "hwe_x".into(),
            host,
            agent: proto::AgentStatus::new("0.1.0", 10, now),
            instance_identity: None,
        };
        if req.validate().is_ok() {
            let bad = |s: &str| s.chars().any(|c| c.is_control() || proto::invisible(c));
            prop_assert!(!bad(&hostname) && !bad(&key) && !bad(&value));
            prop_assert!(!hostname.is_empty() && !key.is_empty());
        }
    }
}

/// The case the property above finds by chance, always: a process name that would rewrite a
/// terminal or show reversed is refused, named (the agent replaces such characters first).
#[test]
fn a_process_name_with_control_or_bidi_characters_is_refused_where_it_is() {
    for bad in ["\u{202e}\u{1b}[2J\u{9b}\u{7f}", "a\nb", "zw\u{200b}"] {
        let mut v = sample_report();
        v["snapshot"]["processes"][0]["name"] = Value::String(bad.into());
        let r: proto::Report = serde_json::from_value(v).unwrap();
        let e = r.validate().unwrap_err();
        assert!(e.to_string().contains("processes[0].name"), "{bad:?}: {e}");
    }
}
