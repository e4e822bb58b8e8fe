//! Retry delays after failed passes: exponential growth (via `backon`), capped, with jitter.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How retry delays after failed passes grow.
///
/// The base delay starts at `min`, is multiplied by `factor` after every consecutive failure
/// and never exceeds `max`. With `jitter`, each delay is drawn uniformly from
/// `[max(min, base / 2), base]` ("equal jitter"), so every delay stays within `[min, max]`.
/// (backon's own jitter adds up to one extra `base`, which would overshoot `max`; that is why
/// backon supplies only the base sequence here.) A successful pass resets the base to `min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// First retry delay, and the lower bound of every delay.
    pub min: Duration,
    /// Upper bound of every delay. A `max` below `min` is treated as `min`.
    pub max: Duration,
    /// Growth per consecutive failure. A factor below 1.0 is treated as 1.0 (constant delay).
    pub factor: f32,
    /// Randomise each delay within `[max(min, base / 2), base]`.
    pub jitter: bool,
}

impl Default for BackoffConfig {
    /// 1 s doubling up to 60 s, with jitter: a passing hiccup is retried almost at once, a
    /// dependency that stays down is asked about once a minute, and many controllers that
    /// failed together do not retry in step.
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
        }
    }
}

/// The running retry sequence of one controller.
///
/// Invariant: `steps` is the sequence built from `builder`, advanced once per failure since the
/// last success (or since start-up).
pub(crate) struct Backoff {
    config: BackoffConfig,
    builder: ExponentialBuilder,
    steps: <ExponentialBuilder as BackoffBuilder>::Backoff,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        let config = BackoffConfig {
            max: config.max.max(config.min),
            factor: config.factor.max(1.0),
            ..config
        };
        let builder = ExponentialBuilder::new()
            .with_min_delay(config.min)
            .with_max_delay(config.max)
            .with_factor(config.factor)
            .without_max_times();
        Self {
            config,
            builder,
            steps: builder.build(),
        }
    }

    /// The delay before the next retry; advances the sequence.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // `without_max_times` makes the sequence endless; `max` is the sane value should it
        // ever end anyway.
        let base = self.steps.next().unwrap_or(self.config.max);
        if self.config.jitter {
            let jittered = base.mul_f64(rand::random_range(0.5..=1.0));
            jittered.clamp(self.config.min, self.config.max)
        } else {
            base
        }
    }

    /// Start again from `min`, after a success.
    pub(crate) fn reset(&mut self) {
        self.steps = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn without_jitter_doubles_then_caps_then_resets() {
        let mut b = Backoff::new(BackoffConfig {
            jitter: false,
            ..BackoffConfig::default()
        });
        let seq: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(), secs(1));
    }

    #[test]
    fn with_jitter_stays_within_half_base_and_base() {
        for _ in 0..50 {
            let mut b = Backoff::new(BackoffConfig::default());
            for base in [1u64, 2, 4, 8, 16, 32, 60, 60, 60, 60] {
                let d = b.next_delay();
                let low = secs(base).mul_f64(0.5).max(secs(1));
                assert!(
                    d >= low && d <= secs(base),
                    "{d:?} not in [{low:?}, {base}s]"
                );
            }
        }
    }

    #[test]
    fn insane_config_is_tamed() {
        let mut b = Backoff::new(BackoffConfig {
            min: secs(5),
            max: secs(1),
            factor: 0.1,
            jitter: true,
        });
        for _ in 0..5 {
            assert_eq!(b.next_delay(), secs(5));
        }
    }
}
