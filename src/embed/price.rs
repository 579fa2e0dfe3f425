//! List prices of embedding models, for the cost estimate in run reports.

/// US dollars per million input tokens (OpenAI's list prices, which TARS passes through); `None` when unknown.
/// Local models cost nothing.
pub fn usd_per_million_tokens(model: &str) -> Option<f64> {
    if model.starts_with(super::LOCAL_PREFIX) {
        return Some(0.0);
    }
    match super::wire_model(model) {
        "text-embedding-3-small" => Some(0.02),
        "text-embedding-3-large" => Some(0.13),
        "text-embedding-ada-002" => Some(0.10),
        _ => None,
    }
}

/// Estimated cost of `tokens` tokens with `model`.
pub fn estimate_usd(model: &str, tokens: u64) -> Option<f64> {
    usd_per_million_tokens(model).map(|p| p * tokens as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_are_priced_and_local_ones_are_free() {
        assert_eq!(estimate_usd("tars/text-embedding-3-small", 1_000_000), Some(0.02));
        assert_eq!(estimate_usd("text-embedding-3-large", 2_000_000), Some(0.26));
        assert_eq!(estimate_usd("local/all-minilm-l6-v2", 5_000_000), Some(0.0));
        assert_eq!(estimate_usd("tars/some-new-model", 10), None);
    }
}
