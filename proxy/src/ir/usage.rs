//! Token counts, as providers report them.

use serde::Deserialize;

use super::tolerant::null_as_default;

/// Token counts reported by a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub prompt_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub total_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// Breakdown of prompt tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default, deserialize_with = "null_as_default")]
    pub cached_tokens: u64,
}

// === impl Usage ===

impl Usage {
    /// Usage from input, output and cached-input counts; `input` includes `cached`.
    pub fn new(input: u64, output: u64, cached: u64) -> Self {
        Self {
            prompt_tokens: input,
            completion_tokens: output,
            // Saturating: the numbers may come from a stored value or a provider.
            total_tokens: input.saturating_add(output),
            prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails {
                cached_tokens: cached,
            }),
        }
    }

    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}
