//! The inbound rate of a Work stream.

use std::time::Instant;

/// The messages a worker may send: `rate` a second sustained, twice that
/// in a burst (a token bucket).
pub struct InboundBudget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl InboundBudget {
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: 2.0 * rate,
            at: Instant::now(),
        }
    }

    /// Spends one message; false past the budget.
    pub fn spend(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}
