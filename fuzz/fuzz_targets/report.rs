//! A report body as the collector decodes it: JSON to the contract's types, then validation.
//! Neither may panic; what validates must survive a round trip.
#![no_main]

use hostwatch_proto::v1::{Report, Validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Report>(data)
        && r.validate().is_ok()
    {
        let text = serde_json::to_vec(&r).expect("a validated report serializes");
        let again: Report = serde_json::from_slice(&text).expect("and decodes again");
        assert_eq!(again, r);
    }
});
