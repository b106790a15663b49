//! Property tests of the decoders people's files go through: baselines and the agent's
//! configuration. Whatever the file says, parsing never panics, and a refusal names the file
//! (and, where it can, the line and column). The fuzz targets in `fuzz/` push the same entry
//! points further, for longer.

#![allow(clippy::unwrap_used)]

use hostwatch_agent::config::AgentConfig;
use hostwatch_server::baseline;
use proptest::prelude::*;

const WEB: &str = include_str!("../../packaging/baselines/web.toml");
const BASE: &str = include_str!("../../packaging/baselines/linux-base.toml");

/// `src` with `insert` put in at byte `at` (moved back to a character boundary).
fn spliced(src: &str, at: usize, insert: &str) -> String {
    let mut at = at % (src.len() + 1);
    while !src.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}{insert}{}", &src[..at], &src[at..])
}

/// Text that looks like TOML more often than random text does.
fn tomlish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\[\\]{}=\".,#\n a-z0-9_*/-]{0,80}",
        Just("\"\u{202e}\"".to_owned()),
        Just("until = 2026-13-45\n".to_owned()),
        Just("[[process]]\nname = \"\"\n".to_owned()),
        Just("include = [\"web\", \"web\"]\n".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_baseline_text_parses_or_names_the_file(src in any::<String>()) {
        if let Err(e) = baseline::parse("any.toml", &src) {
            prop_assert!(e.to_string().starts_with("any.toml"), "{e}");
        }
    }

    #[test]
    fn a_shipped_baseline_with_anything_spliced_in_parses_or_says_where(
        which in any::<bool>(),
        at in any::<usize>(),
        insert in tomlish(),
    ) {
        let src = spliced(if which { WEB } else { BASE }, at, &insert);
        if let Err(e) = baseline::parse("web.toml", &src) {
            let text = e.to_string();
            prop_assert!(text.starts_with("web.toml"), "{text}");
        }
    }

    #[test]
    fn any_agent_configuration_loads_or_names_the_file(src in tomlish(), at in any::<usize>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let base = "server = \"https://collector.example:8080\"\ninterval = \"10s\"\n[tags]\nrole = \"web\"\n";
        std::fs::write(&path, spliced(base, at, &src)).unwrap();
        if let Err(e) = AgentConfig::load(Some(&path), Vec::<(String, String)>::new()) {
            let text = e.to_string();
            prop_assert!(text.contains(path.to_str().unwrap()), "{text}");
        }
    }
}
