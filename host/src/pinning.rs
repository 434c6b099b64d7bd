//! Pinning: a pipeline can name the exact plugin it runs, not only its name.
//!
//! A plugin's name is what the plugin reports, so a name alone says nothing
//! about which code runs with a pipeline's grants. On `[pipelines.source]` and
//! each `[[pipelines.writers]]`, `sha256` pins the plugin file's content (the
//! full SHA-256, as `sha256sum` prints it) and `signer` pins the trusted key
//! that signed it (its key id or its `.pub` file's name; only with
//! `daemon.trusted_keys`). A plugin in use that does not match its pin is not
//! run: the pipeline is paused, its messages wait in the queue, until the file
//! or the pin changes (deploy the new file and the new pin together; a reload
//! applies both).
//!
//! A hash prefix is not accepted: 12 hex digits are 48 bits, and a file
//! matching a given 48-bit prefix can be found with a few GPU-hours.

use std::fmt;

use crate::plugin_runtime::LoadedPlugin;
use crate::signing::{KeyId, Signer, TrustedKey};

/// What a plugin must be to run in a pipeline, beyond its name. Empty: any
/// plugin with the name (and, with `trusted_keys`, any trusted signer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pin {
    /// The SHA-256 of the plugin file's content, 64 lower-case hex digits
    /// (`sha256`).
    pub sha256: Option<String>,
    /// The trusted key that must have signed the file (`signer`).
    pub signer: Option<SignerPin>,
}

/// A pinned signer: one of `daemon.trusted_keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerPin {
    /// The key's id: what a signature is matched by.
    pub key_id: KeyId,
    /// The key's file name, for messages.
    pub key_file: String,
}

impl fmt::Display for SignerPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.key_file, self.key_id)
    }
}

/// One way a plugin does not match its pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The pin's key: `sha256` or `signer`.
    pub key: &'static str,
    /// What the pin says.
    pub pinned: String,
    /// What the plugin in use is.
    pub found: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pinned {} {}, found {}",
            self.key, self.pinned, self.found
        )
    }
}

impl Pin {
    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.signer.is_none()
    }

    /// How `plugin`, signed by `signer` (`None`: not verified or not signed),
    /// differs from the pin; empty when it matches.
    pub fn check(&self, plugin: &LoadedPlugin, signer: Option<&Signer>) -> Vec<Mismatch> {
        let mut mismatches = Vec::new();
        if let Some(sha256) = &self.sha256
            && !plugin.sha256.eq_ignore_ascii_case(sha256)
        {
            mismatches.push(Mismatch {
                key: "sha256",
                pinned: sha256.clone(),
                found: plugin.sha256.clone(),
            });
        }
        if let Some(pinned) = &self.signer {
            let found = match signer {
                Some(s) if s.key_id == pinned.key_id => None,
                Some(s) => Some(format!("signed by {} ({})", s.key_file, s.key_id)),
                None => Some("no verified signature".to_string()),
            };
            if let Some(found) = found {
                mismatches.push(Mismatch {
                    key: "signer",
                    pinned: pinned.to_string(),
                    found,
                });
            }
        }
        mismatches
    }
}

/// Reads a `sha256` pin: 64 hex digits (either case); the error says what is
/// expected.
pub fn parse_sha256(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(text.to_ascii_lowercase());
    }
    let hex = text.chars().all(|c| c.is_ascii_hexdigit());
    let why = if hex && text.len() < 64 {
        format!(
            "{text:?} is {} hex digits, a prefix; a pin must be the whole hash (a prefix can be matched by a forged file)",
            text.len()
        )
    } else {
        format!("{text:?} is not a SHA-256")
    };
    Err(format!(
        "{why}; expected the 64 hex digits `sha256sum FILE.wasm` prints for the plugin file"
    ))
}

/// Finds the trusted key a `signer` pin names: by key id (16 hex digits, as
/// minisign shows it, either case) or by the key file's name (`ci.pub`).
pub fn find_signer(text: &str, keys: &[TrustedKey]) -> Result<SignerPin, String> {
    keys.iter()
        .find(|k| k.id.to_string().eq_ignore_ascii_case(text) || k.file_name() == text)
        .map(|k| SignerPin {
            key_id: k.id,
            key_file: k.file_name(),
        })
        .ok_or_else(|| {
            let known: Vec<String> = keys
                .iter()
                .map(|k| format!("{} ({})", k.file_name(), k.id))
                .collect();
            format!(
                "{text:?} is not one of daemon.trusted_keys; expected a key id or file name among: {}",
                known.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha256_pin_is_the_whole_hash() {
        let full = "AB".repeat(32);
        assert_eq!(parse_sha256(&full).unwrap(), "ab".repeat(32));
        let prefix = parse_sha256("abcdef012345").unwrap_err();
        assert!(prefix.contains("12 hex digits, a prefix"), "{prefix}");
        let junk = parse_sha256("postgres-writer").unwrap_err();
        assert!(junk.contains("is not a SHA-256"), "{junk}");
    }
}
