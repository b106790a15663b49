//! The agent's configuration file: loading never panics, and a refusal names the file.
#![no_main]

use hostwatch_agent::config::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("hostwatch-fuzz-agent-{}.toml", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Err(e) = AgentConfig::load(Some(&path), Vec::<(String, String)>::new()) {
        let text = e.to_string();
        assert!(text.contains(path.to_str().unwrap_or_default()), "{text}");
    }
});
