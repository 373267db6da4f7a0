//! Money and prices as exact integers: balances in micro-units (10⁻⁶ of the currency),
//! prices in micro-units per million tokens. Decimal strings in and out, never floats.

use std::fmt;
use std::str::FromStr;
use tokenfab_wire::usage::TokenUsage;

/// Micro-units per unit of currency.
pub const MICROS: i64 = 1_000_000;

/// An amount of money in micro-units (may be negative: a charge, or an overdrawn display).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

/// Why a decimal string is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an amount: write a decimal number with at most 6 decimals, like 10.50")]
pub struct BadAmount(pub String);

impl FromStr for Money {
    type Err = BadAmount;

    fn from_str(s: &str) -> Result<Money, BadAmount> {
        let bad = || BadAmount(s.to_owned());
        let t = s.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !(digits(int) || (int.is_empty() && digits(frac))) || (!frac.is_empty() && !digits(frac))
        {
            return Err(bad());
        }
        if frac.len() > 6 {
            return Err(bad());
        }
        let whole: i64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut f: i64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            f += (b - b'0') as i64 * 10i64.pow(5 - i as u32);
        }
        let v = whole
            .checked_mul(MICROS)
            .and_then(|w| w.checked_add(f))
            .ok_or_else(bad)?;
        Ok(Money(if neg { -v } else { v }))
    }
}

impl fmt::Display for Money {
    /// At least two decimals, at most six, trailing zeros beyond the second dropped:
    /// `10.00`, `0.000133`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let v = self.0.unsigned_abs();
        let (whole, frac) = (v / MICROS as u64, v % MICROS as u64);
        let mut frac = format!("{frac:06}");
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        write!(f, "{sign}{whole}.{frac}")
    }
}

/// A model's prices per million tokens, in micro-units. Zero everywhere is a free model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_million: Money,
    pub output_per_million: Money,
    /// Prompt tokens served from the prefix cache; the input price when not set.
    pub cached_input_per_million: Option<Money>,
}

impl Price {
    pub fn is_free(&self) -> bool {
        self.input_per_million.0 == 0
            && self.output_per_million.0 == 0
            && self.cached_input_per_million.is_none_or(|m| m.0 == 0)
    }

    /// The exact cost: each token class times its price, summed, divided by a million and
    /// rounded up to the micro-unit once per request. Reasoning tokens are output tokens
    /// (`completion` includes them).
    pub fn cost(&self, t: TokenUsage) -> Money {
        let cached = t.cached.min(t.prompt);
        let cached_price = self
            .cached_input_per_million
            .unwrap_or(self.input_per_million);
        // Each product fits an i128 (a u64 times an i64); their sum may not, for counts an
        // upstream reported: it saturates, and the clamp below keeps the cost in range.
        let total = ((t.prompt - cached) as i128 * self.input_per_million.0 as i128)
            .saturating_add(cached as i128 * cached_price.0 as i128)
            .saturating_add(t.completion as i128 * self.output_per_million.0 as i128);
        let micros = total.saturating_add(999_999).div_euclid(1_000_000);
        Money(micros.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    /// The most a request can cost: every prompt token at the dearer input price and every
    /// possible output token. Reserved before it runs, so concurrent requests cannot spend
    /// the same money twice.
    pub fn most(&self, prompt: u64, max_completion: u64) -> Money {
        let input = self
            .input_per_million
            .max(self.cached_input_per_million.unwrap_or_default());
        Price {
            input_per_million: input,
            output_per_million: self.output_per_million,
            cached_input_per_million: None,
        }
        .cost(TokenUsage {
            completion: max_completion,
            ..TokenUsage::prompt(prompt)
        })
    }
}

/// The share of a price a batch request pays (`batch_discount`, e.g. `0.5`), in millionths:
/// more than 0, at most 1 (the default: no discount).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share(pub i64);

impl Default for Share {
    fn default() -> Self {
        Share(MICROS)
    }
}

impl FromStr for Share {
    type Err = BadAmount;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let m: Money = s.parse()?;
        if m.0 <= 0 || m.0 > MICROS {
            return Err(BadAmount(format!(
                "`{s}` is not a share of the price: give a decimal above 0 and at most 1"
            )));
        }
        Ok(Share(m.0))
    }
}

impl Price {
    /// These prices times `share`, each rounded up to the micro-unit: what a batch request
    /// is reserved and charged at, through the same [`Price::cost`] as any other.
    pub fn times(&self, share: Share) -> Price {
        let scale = |m: Money| {
            Money(
                (m.0 as i128 * share.0 as i128 + MICROS as i128 - 1).div_euclid(MICROS as i128)
                    as i64,
            )
        };
        Price {
            input_per_million: scale(self.input_per_million),
            output_per_million: scale(self.output_per_million),
            cached_input_per_million: self.cached_input_per_million.map(scale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exact_decimals() {
        let m = |s: &str| s.parse::<Money>().unwrap();
        assert_eq!(m("10.00"), Money(10_000_000));
        assert_eq!(m("0.000001"), Money(1));
        assert_eq!(m(".5"), Money(500_000));
        assert_eq!(m("-1.25"), Money(-1_250_000));
        assert_eq!(m("3"), Money(3_000_000));
        assert_eq!(m("10.00").to_string(), "10.00");
        assert_eq!(Money(133).to_string(), "0.000133");
        assert_eq!(Money(-1_250_000).to_string(), "-1.25");
        for bad in ["", "1.2345678", "1e3", "abc", "1.2.3", "-", "."] {
            assert!(bad.parse::<Money>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cost_is_exact_and_rounds_up_once() {
        let p = Price {
            input_per_million: "1.33".parse().unwrap(),
            output_per_million: "4".parse().unwrap(),
            cached_input_per_million: Some("0.5".parse().unwrap()),
        };
        // 100 × 1.33 + 20 × 0.5 + 10 × 4 = 133 + 10 + 40 micro-units.
        let t = TokenUsage {
            prompt: 120,
            cached: 20,
            completion: 10,
            reasoning: 4,
        };
        assert_eq!(p.cost(t), Money(183));
        // One token at 0.1 per million is a tenth of a micro-unit: rounded up to one.
        let cheap = Price {
            input_per_million: "0.1".parse().unwrap(),
            ..Price::default()
        };
        assert_eq!(cheap.cost(TokenUsage::prompt(1)), Money(1));
        assert!(Price::default().is_free());
        // 120 × 1.33 + 10 × 4 = 199.6 micro-units, rounded up.
        assert_eq!(p.most(120, 10), Money(200));
        // Counts no request can have (an upstream may report anything) cost the most there
        // is, without overflowing.
        let dear = Price {
            input_per_million: Money(i64::MAX),
            output_per_million: Money(i64::MAX),
            cached_input_per_million: None,
        };
        let absurd = TokenUsage {
            prompt: u64::MAX,
            completion: u64::MAX,
            ..TokenUsage::default()
        };
        assert_eq!(dear.cost(absurd), Money(i64::MAX));
    }

    #[test]
    fn a_share_scales_every_price_and_must_be_a_fraction() {
        let p = Price {
            input_per_million: "1.00".parse().unwrap(),
            output_per_million: "3".parse().unwrap(),
            cached_input_per_million: Some(Money(1)),
        };
        let half: Share = "0.5".parse().unwrap();
        let q = p.times(half);
        assert_eq!(
            (
                q.input_per_million,
                q.output_per_million,
                q.cached_input_per_million
            ),
            (Money(500_000), Money(1_500_000), Some(Money(1)))
        );
        assert_eq!(p.times(Share::default()), p);
        for bad in ["0", "1.5", "-0.5", "x"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
    }
}
