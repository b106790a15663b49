//! A baseline file: parsing never panics, and a refusal names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data)
        && let Err(e) = hostwatch_server::baseline::parse("fuzz.toml", src)
    {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
    }
});
