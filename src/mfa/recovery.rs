//! Recovery codes: ten single-use codes of 80 random bits each, shown once
//! and stored as SHA-256 hashes (80 bits of entropy make a fast hash safe).

use rand::Rng;
use sha2::{Digest, Sha256};

/// How many codes a user gets.
pub const COUNT: usize = 10;
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// Ten fresh codes, formatted `xxxx-xxxx-xxxx-xxxx`.
pub fn generate() -> Vec<String> {
    let mut rng = rand::thread_rng();
    (0..COUNT)
        .map(|_| {
            // 16 symbols from a 31-letter alphabet: 79.3 bits.
            let chars: Vec<char> = (0..16).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
            chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
        })
        .collect()
}

/// The stored form of a code: SHA-256 (hex) of the code with dashes and
/// spaces removed and letters lowercased, so users may type it either way.
pub fn hash(code: &str) -> String {
    let normal: String = code.chars().filter(|c| !matches!(c, '-' | ' ')).flat_map(char::to_lowercase).collect();
    Sha256::digest(normal.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_normalised() {
        let codes = generate();
        assert_eq!(codes.len(), COUNT);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), COUNT);
        assert!(codes.iter().all(|c| c.len() == 19 && c.matches('-').count() == 3));
        assert_eq!(hash(&codes[0]), hash(&codes[0].replace('-', " ").to_uppercase()));
        assert_ne!(hash(&codes[0]), hash(&codes[1]));
    }
}
