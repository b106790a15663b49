//! Generating and hashing credentials: node keys, API tokens and enroll secrets.
//!
//! Every credential is 32 random bytes in hex behind a prefix that says what it is. Being random
//! and long, a plain SHA-256 is the right stored form (a slow password hash buys nothing against
//! 256 bits of entropy); only the hash is ever stored.

use hostwatch_agent::shared::config::Secret;
use sha2::{Digest, Sha256};

/// A new credential with `prefix` (`hwn_`, `hwt_`, `hwe_`).
pub fn generate(prefix: &str) -> Result<Secret, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(Secret::new(format!("{prefix}{}", hex::encode(bytes))))
}

/// The stored form of a credential.
pub fn hash(credential: &str) -> String {
    hex::encode(Sha256::digest(credential.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_are_distinct_and_prefixed() {
        let a = generate("hwt_").unwrap();
        let b = generate("hwt_").unwrap();
        assert!(a.expose().starts_with("hwt_") && a.expose().len() == 68);
        assert_ne!(a, b);
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
