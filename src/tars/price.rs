//! List prices of chat models, for `ask --dry-run`'s estimate. These are the providers' published prices per
//! million tokens (input, output) in US dollars; TARS passes them through with its own margin, so an estimate is a
//! floor, and a model not listed has none.

/// (input, output) USD per million tokens.
fn per_million(model: &str) -> Option<(f64, f64)> {
    let id = super::model_id(model);
    // Longest prefix first: `gpt-4o-mini` before `gpt-4o`.
    const PRICES: &[(&str, f64, f64)] = &[
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4o", 2.50, 10.00),
        ("gpt-4.1-nano", 0.10, 0.40),
        ("gpt-4.1-mini", 0.40, 1.60),
        ("gpt-4.1", 2.00, 8.00),
        ("gpt-5-nano", 0.05, 0.40),
        ("gpt-5-mini", 0.25, 2.00),
        ("gpt-5", 1.25, 10.00),
        ("o4-mini", 1.10, 4.40),
        ("o3-mini", 1.10, 4.40),
        ("claude-opus-4", 15.00, 75.00),
        ("claude-sonnet-4", 3.00, 15.00),
        ("claude-3-7-sonnet", 3.00, 15.00),
        ("claude-3-5-haiku", 0.80, 4.00),
        ("gemini-2.5-pro", 1.25, 10.00),
        ("gemini-2.5-flash", 0.30, 2.50),
        ("gemini-2.0-flash-lite", 0.075, 0.30),
        ("gemini-2.0-flash", 0.10, 0.40),
    ];
    PRICES.iter().find(|(prefix, _, _)| id.starts_with(prefix)).map(|&(_, input, output)| (input, output))
}

/// The cost of `input` prompt tokens and `output` completion tokens with `model`, when its price is known.
pub fn chat_usd(model: &str, input: u64, output: u64) -> Option<f64> {
    per_million(model).map(|(i, o)| (i * input as f64 + o * output as f64) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins_and_unknown_models_have_no_price() {
        assert_eq!(chat_usd("tars/gpt-4o-mini", 1_000_000, 1_000_000), Some(0.75));
        assert_eq!(chat_usd("tars/gpt-4o-2024-08-06", 1_000_000, 0), Some(2.5));
        assert_eq!(chat_usd("tars/claude-sonnet-4-20250514", 0, 1_000_000), Some(15.0));
        assert_eq!(chat_usd("tars/gemini-2.0-flash-lite", 1_000_000, 0), Some(0.075));
        assert_eq!(chat_usd("tars/some-new-model", 10, 10), None);
    }
}
