//! What a probed service answers (hostile: any listener on the host may say anything): the
//! agent's parsers of Redis, memcached and MongoDB answers never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hostwatch_agent::probe::parse_answers(data);
});
