//! An enrollment body: decoding and validation never panic.
#![no_main]

use hostwatch_proto::v1::{EnrollRequest, Validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<EnrollRequest>(data) {
        let _ = r.validate();
    }
});
