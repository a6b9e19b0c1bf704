//! Token counts, as providers report them.
//!
//! The IR counts tokens the way OpenAI does, whatever API the provider spoke, and
//! every reader and writer converts to and from that one rule:
//!
//! - `prompt_tokens` is every input token the provider processed: cache reads and
//!   cache writes included. OpenAI's `prompt_tokens` and Gemini's `promptTokenCount`
//!   already include cached tokens (neither reports cache writes); Anthropic's
//!   `input_tokens` excludes both, so its reader adds `cache_read_input_tokens` and
//!   `cache_creation_input_tokens`.
//! - `prompt_tokens_details.cached_tokens` is the part of `prompt_tokens` read from the
//!   provider's prompt cache; `cache_write_tokens` the part written to it (Anthropic
//!   only, billed above the input rate), of which `cache_write_1h_tokens` kept an hour
//!   (billed higher still). Reads and writes never overlap.
//! - `completion_tokens` is every output token billed: reasoning included. OpenAI's
//!   `completion_tokens` already includes `reasoning_tokens`; Gemini's
//!   `candidatesTokenCount` does not include `thoughtsTokenCount`, so its reader adds
//!   them. Anthropic reports thinking inside `output_tokens`, without a breakdown.
//! - `completion_tokens_details.reasoning_tokens` is the part of `completion_tokens`
//!   spent thinking: told apart for metrics, priced as output.
//!
//! So the plain input (billed at the input rate) is `prompt_tokens - cached - writes`.

use serde::Deserialize;
use switchboard_api::snapshot::{BilledTokens, Pricing};

use super::tolerant::null_as_default;

/// Token counts reported by a provider. Read as is from OpenAI's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub prompt_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub total_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// Breakdown of prompt tokens: parts of `prompt_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptTokensDetails {
    /// Read from the provider's prompt cache.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cached_tokens: u64,
    /// Written to the provider's prompt cache (Anthropic's `cache_creation_input_tokens`).
    /// OpenAI has no such field: skipped when reading its `usage`.
    #[serde(skip)]
    pub cache_write_tokens: u64,
    /// Of `cache_write_tokens`, kept an hour (Anthropic's
    /// `cache_creation.ephemeral_1h_input_tokens`).
    #[serde(skip)]
    pub cache_write_1h_tokens: u64,
}

/// Breakdown of completion tokens: parts of `completion_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default, deserialize_with = "null_as_default")]
    pub reasoning_tokens: u64,
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
                cache_write_tokens: 0,
                cache_write_1h_tokens: 0,
            }),
            completion_tokens_details: None,
        }
    }

    /// With `writes` of the input tokens written to the prompt cache (already counted
    /// in `prompt_tokens`).
    pub fn with_cache_writes(mut self, writes: u64) -> Self {
        if writes > 0 || self.prompt_tokens_details.is_some() {
            let details = self.prompt_tokens_details.get_or_insert_default();
            details.cache_write_tokens = writes;
        }
        self
    }

    /// With `writes` of the cache writes kept an hour (already counted in
    /// `with_cache_writes`).
    pub fn with_cache_writes_1h(mut self, writes: u64) -> Self {
        if writes > 0 {
            let details = self.prompt_tokens_details.get_or_insert_default();
            details.cache_write_1h_tokens = writes;
        }
        self
    }

    /// With `reasoning` of the output tokens spent thinking (already counted in
    /// `completion_tokens`).
    pub fn with_reasoning(mut self, reasoning: u64) -> Self {
        self.completion_tokens_details = (reasoning > 0).then_some(CompletionTokensDetails {
            reasoning_tokens: reasoning,
        });
        self
    }

    /// Input tokens read from the prompt cache.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }

    /// Input tokens written to the prompt cache.
    pub fn cache_write_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .map_or(0, |d| d.cache_write_tokens)
    }

    /// Cache writes kept an hour.
    pub fn cache_write_1h_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .map_or(0, |d| d.cache_write_1h_tokens)
    }

    /// Output tokens spent reasoning.
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .map_or(0, |d| d.reasoning_tokens)
    }

    /// What these tokens cost at `pricing`: every kind at its own rate.
    pub fn cost_usd(&self, pricing: &Pricing) -> f64 {
        pricing.cost_usd(BilledTokens {
            input: self.prompt_tokens,
            cache_reads: self.cached_tokens(),
            cache_writes: self.cache_write_tokens(),
            cache_writes_1h: self.cache_write_1h_tokens(),
            output: self.completion_tokens,
        })
    }

    /// Input tokens neither read from nor written to the prompt cache: what Anthropic
    /// calls `input_tokens`. Saturating: a provider's counts may not add up.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_sub(self.cached_tokens())
            .saturating_sub(self.cache_write_tokens())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_usage_reads_cached_and_reasoning_details() {
        let usage: Usage = serde_json::from_str(
            r#"{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150,
                "prompt_tokens_details":{"cached_tokens":60,"audio_tokens":0},
                "completion_tokens_details":{"reasoning_tokens":30,"audio_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(usage, Usage::new(100, 50, 60).with_reasoning(30));
        assert_eq!(usage.uncached_input_tokens(), 40);
        let null: Usage =
            serde_json::from_str(r#"{"prompt_tokens":1,"completion_tokens_details":null}"#)
                .unwrap();
        assert_eq!(null.reasoning_tokens(), 0);
    }

    #[test]
    fn uncached_input_never_goes_below_zero() {
        let usage = Usage::new(10, 0, 8).with_cache_writes(8);
        assert_eq!(usage.uncached_input_tokens(), 0);
        assert_eq!(usage.cache_write_tokens(), 8);
    }
}
