//! Which gateway keys are refused: too short, too predictable, or published.
//!
//! A gateway key copied from an example works for everyone who read the example, so
//! placeholders and every key shipped in `examples/` are refused, except the
//! quickstart's public key where it can spend nothing: in the standalone proxy while
//! every provider is the built-in echo provider.

/// Gateway keys shorter than this are refused: they are guessable.
pub const MIN_KEY_LENGTH: usize = 16;

/// Gateway keys estimated below this many bits are refused (see [`estimated_bits`]).
pub const MIN_KEY_BITS: f64 = 48.0;

/// The quickstart's public key (`examples/quickstart`).
pub const QUICKSTART_KEY: &str = "sk-switchboard-quickstart";

/// Keys shipped in `examples/` that no placeholder word gives away. A test reads every
/// example and fails when one of its keys is not refused.
pub const EXAMPLE_KEYS: &[&str] = &[QUICKSTART_KEY];

/// Words that mark a placeholder, compared without regard to case.
pub const PLACEHOLDER_WORDS: &[&str] = &["replace", "change-me", "changeme", "example"];

/// Why a gateway key is refused: a sentence for a status message, naming no part of
/// the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Weakness {
    TooShort,
    Predictable,
    Placeholder,
    Published,
}

/// Checks a gateway key. `quickstart_allowed`: the quickstart's key is accepted (the
/// standalone proxy, echo providers only).
pub fn check_gateway_key(key: &str, quickstart_allowed: bool) -> Result<(), Weakness> {
    if key == QUICKSTART_KEY && quickstart_allowed {
        return Ok(());
    }
    if EXAMPLE_KEYS.contains(&key) {
        return Err(Weakness::Published);
    }
    let lower = key.to_ascii_lowercase();
    if PLACEHOLDER_WORDS.iter().any(|word| lower.contains(word)) {
        return Err(Weakness::Placeholder);
    }
    if key.chars().count() < MIN_KEY_LENGTH {
        return Err(Weakness::TooShort);
    }
    if estimated_bits(key) < MIN_KEY_BITS {
        return Err(Weakness::Predictable);
    }
    Ok(())
}

/// A rough upper bound on a key's entropy in bits: its length times the Shannon
/// entropy of its characters' frequencies. It refuses keys made of a few repeated
/// characters (`aaaa…`, `abcabc…`, short hex words); it cannot tell a random key from
/// a memorable phrase, which is why `switchboard-operator keys create` makes keys.
pub fn estimated_bits(key: &str) -> f64 {
    // Keys are ASCII in practice: count those in an array (compile checks thousands of
    // keys), anything else in a map.
    let mut ascii = [0u32; 128];
    let mut other = std::collections::BTreeMap::new();
    let mut length = 0u32;
    for c in key.chars() {
        match ascii.get_mut(c as usize) {
            Some(count) => *count += 1,
            None => *other.entry(c).or_insert(0u32) += 1,
        }
        length += 1;
    }
    let n = f64::from(length);
    let per_char: f64 = ascii
        .iter()
        .chain(other.values())
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / n;
            -p * p.log2()
        })
        .sum();
    per_char * n
}

// === impl Weakness ===

impl Weakness {
    /// What is wrong and how to fix it.
    pub fn explain(&self) -> String {
        let fix = "make one with `switchboard-operator keys create`, or \
                   `openssl rand -base64 32`";
        match self {
            Weakness::TooShort => {
                format!("the gateway key is shorter than {MIN_KEY_LENGTH} characters; {fix}")
            }
            Weakness::Predictable => format!(
                "the gateway key is too predictable (estimated under {MIN_KEY_BITS} bits: too \
                 few distinct characters); {fix}"
            ),
            Weakness::Placeholder => format!(
                "the gateway key is a placeholder (it contains a word such as REPLACE, \
                 change-me or example); {fix}"
            ),
            Weakness::Published => format!(
                "the gateway key is published in Switchboard's examples, so anyone may know \
                 it (the quickstart's key works only in the standalone proxy with echo \
                 providers); {fix}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_short_predictable_placeholder_and_published_keys() {
        assert_eq!(
            check_gateway_key("short-key", false),
            Err(Weakness::TooShort)
        );
        assert_eq!(
            check_gateway_key("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            Err(Weakness::Predictable)
        );
        assert_eq!(
            check_gateway_key("abcabcabcabcabcabcabcabc", false),
            Err(Weakness::Predictable)
        );
        assert_eq!(
            check_gateway_key("sk-switchboard-REPLACE-WITH-A-LONG-RANDOM-KEY", false),
            Err(Weakness::Placeholder)
        );
        assert_eq!(
            check_gateway_key("sk-my-app-key-Change-Me-0123456789", false),
            Err(Weakness::Placeholder)
        );
        assert_eq!(
            check_gateway_key(QUICKSTART_KEY, false),
            Err(Weakness::Published)
        );
        assert_eq!(check_gateway_key(QUICKSTART_KEY, true), Ok(()));
        assert_eq!(
            check_gateway_key("sk-sb-Qx8vT1mZ0rL3kP9wYb2NcE5uHf7JgAd4", false),
            Ok(())
        );
        // 32 hex characters from `openssl rand -hex 16`.
        assert_eq!(
            check_gateway_key("9f2c4e71b0a83d56e1f7c2948ab05d3e", false),
            Ok(())
        );
    }

    #[test]
    fn every_key_shipped_in_the_examples_is_refused() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut keys = Vec::new();
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            for file in std::fs::read_dir(&dir).into_iter().flatten() {
                let path = file.unwrap().path();
                if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    keys.extend(gateway_keys(&std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        assert!(keys.len() >= 8, "found {} example keys", keys.len());
        for key in &keys {
            assert!(
                check_gateway_key(key, false).is_err(),
                "{key} from examples/ works as a gateway key"
            );
        }
    }

    /// The values of the Secrets that AIConsumers in `yaml` reference.
    fn gateway_keys(yaml: &str) -> Vec<String> {
        use serde::Deserialize;
        let documents: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(yaml)
            .filter_map(|d| serde_json::Value::deserialize(d).ok())
            .collect();
        let mut refs = Vec::new();
        for doc in &documents {
            if doc["kind"] == "AIConsumer" {
                for key in doc["spec"]["keys"].as_array().into_iter().flatten() {
                    let r = &key["secretRef"];
                    refs.push((r["name"].clone(), r["key"].clone()));
                }
            }
        }
        let mut keys = Vec::new();
        for doc in &documents {
            if doc["kind"] != "Secret" {
                continue;
            }
            for (name, key) in &refs {
                let value = doc["stringData"][key.as_str().unwrap_or("")].as_str();
                if let Some(value) = value.filter(|_| doc["metadata"]["name"] == *name) {
                    keys.push(value.to_string());
                }
            }
        }
        keys
    }
}
