//! The run's circuit breaker. When request after request runs out of retries on the same outage (the endpoint, or
//! the model server behind a gateway, is down), every remaining batch would still pay its whole retry budget: with
//! the defaults 7 attempts and about 27 s each, some 45 minutes for 100k chunks. After [`OPEN_AFTER`] such requests
//! in a row the run stops taking new work; what was embedded is published and the next run sends the rest.

use super::isolate::BatchOutcome;
use crate::embed::{EmbedError, Transient};

/// Requests in a row that gave up on the same outage before the run stops.
pub const OPEN_AFTER: u32 = 3;

#[derive(Debug, Default)]
pub struct Breaker {
    in_a_row: u32,
    cause: Option<Transient>,
}

impl Breaker {
    /// Takes one batch's outcome; returns the error that stops the run when the breaker opens.
    pub fn observe(&mut self, outcome: &BatchOutcome) -> Option<EmbedError> {
        let outage = outcome.exhausted.as_ref().filter(|(cause, _)| cause.is_outage() && outcome.embedded.is_empty());
        let Some((cause, last)) = outage else {
            // A success, or a failure that does not say the endpoint is down, ends the streak.
            *self = Self::default();
            return None;
        };
        if self.cause.is_some_and(|known| known.same_outage(cause)) {
            self.in_a_row += 1;
        } else {
            *self = Self { in_a_row: 1, cause: Some(*cause) };
        }
        (self.in_a_row >= OPEN_AFTER).then(|| EmbedError::Unavailable {
            requests: self.in_a_row,
            cause: *cause,
            last: last.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use crate::embed::Embeddings;

    fn failed(cause: Transient) -> BatchOutcome {
        BatchOutcome { exhausted: Some((cause, format!("gave up: {cause}"))), ..BatchOutcome::default() }
    }

    fn succeeded() -> BatchOutcome {
        let nothing = Embeddings { dimensions: 0, vectors: Vec::new(), usage_tokens: None };
        BatchOutcome { embedded: vec![(Batch { chunks: Vec::new(), tokens: 0 }, nothing)], ..BatchOutcome::default() }
    }

    #[test]
    fn opens_after_three_requests_in_a_row_on_the_same_outage() {
        let mut breaker = Breaker::default();
        assert!(breaker.observe(&failed(Transient::Status(500))).is_none());
        assert!(breaker.observe(&failed(Transient::Status(502))).is_none(), "5xx statuses are one outage");
        let error = breaker.observe(&failed(Transient::Status(503))).expect("open");
        assert!(matches!(error, EmbedError::Unavailable { requests: 3, cause: Transient::Status(503), .. }));
        assert!(error.is_fatal());
    }

    #[test]
    fn a_success_or_another_cause_starts_the_count_again() {
        let mut breaker = Breaker::default();
        for outcome in [
            failed(Transient::Transport),
            failed(Transient::Transport),
            succeeded(),
            failed(Transient::Transport),
            failed(Transient::Status(500)),
            failed(Transient::Transport),
            failed(Transient::Transport),
        ] {
            assert!(breaker.observe(&outcome).is_none());
        }
        // Neither rate limits nor input failures say the endpoint is down, and they end a streak.
        let mut breaker = Breaker::default();
        for other in [failed(Transient::RateLimited), BatchOutcome::default()] {
            assert!(breaker.observe(&failed(Transient::Transport)).is_none());
            assert!(breaker.observe(&failed(Transient::Transport)).is_none());
            assert!(breaker.observe(&other).is_none());
        }
        assert!(breaker.observe(&failed(Transient::Transport)).is_none());
    }
}
