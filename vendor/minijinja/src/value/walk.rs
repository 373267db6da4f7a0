//! A per-thread bound on the recursive walks over values (tokenfab's patch).
//!
//! Formatting, serializing, comparing and hashing a value recurse through its
//! containers, and the fuel tracker never sees them.  A template can build values
//! whose walk never ends (a namespace that holds itself), takes exponential time
//! (`x = [x, x]` forty times is a list shared 2^40 ways) or overflows the stack
//! (lists nested a million deep).  Inside [`with_walk_limits`] every value a walk
//! visits costs one step and every visit holds one level of depth until it returns;
//! a walk past either bound stops at once: serializing returns an error, while
//! formatting writes nothing more and comparisons and hashes give answers that
//! mean nothing (formatting errors would panic in `to_string`).  Every later walk
//! on the thread stops the same way, so the caller must discard what it computed
//! and treat the whole computation as failed, which the returned flag says.
//!
//! Outside [`with_walk_limits`] walks are unbounded, as in upstream minijinja.

use std::cell::Cell;

/// The bounds of [`with_walk_limits`].
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// The most walks nested in one another: the nesting of the deepest value
    /// that may be walked, which bounds the stack a walk uses.
    pub max_depth: usize,
    /// The most values all walks together may visit.
    pub max_steps: u64,
}

#[derive(Clone, Copy)]
struct Walk {
    depth: usize,
    steps_left: u64,
    max_depth: usize,
    exceeded: bool,
}

thread_local! {
    static WALK: Cell<Option<Walk>> = const { Cell::new(None) };
}

/// Runs `f` with the walks it makes on this thread bounded by `limits`.  Returns
/// what `f` returned and whether a walk went past a bound, in which case any value
/// `f` computed from a walk is meaningless.
pub fn with_walk_limits<R>(limits: WalkLimits, f: impl FnOnce() -> R) -> (R, bool) {
    struct Restore(Option<Walk>);
    impl Drop for Restore {
        fn drop(&mut self) {
            WALK.with(|w| w.set(self.0));
        }
    }
    let outer = WALK.with(|w| {
        w.replace(Some(Walk {
            depth: 0,
            steps_left: limits.max_steps,
            max_depth: limits.max_depth,
            exceeded: false,
        }))
    });
    let _restore = Restore(outer);
    let rv = f();
    let exceeded = WALK.with(|w| w.get().is_some_and(|w| w.exceeded));
    (rv, exceeded)
}

/// One visit of a walk, holding a level of depth until dropped.
pub(crate) struct Visit {
    counted: bool,
}

impl Drop for Visit {
    fn drop(&mut self) {
        if self.counted {
            WALK.with(|w| {
                if let Some(mut walk) = w.get() {
                    walk.depth -= 1;
                    w.set(Some(walk));
                }
            });
        }
    }
}

/// Starts visiting a value: `None` when that goes past a bound (or one was passed
/// before), and the walk must stop.
pub(crate) fn visit() -> Option<Visit> {
    visit_costing(|_| 1)
}

/// Starts visiting a value in a pretty-printed `{:#?}`, whose every write passes
/// through one indenting adapter per level: a visit, a dozen writes or so, costs
/// sixteen steps a level (measured: a value nested 1,000 deep pretty-prints in 2 s,
/// while a walk of a million plain steps takes 0.06 s).
pub(crate) fn visit_indented() -> Option<Visit> {
    visit_costing(|depth| (depth as u64 + 1).saturating_mul(16))
}

fn visit_costing(cost: impl FnOnce(usize) -> u64) -> Option<Visit> {
    WALK.with(|w| {
        let Some(mut walk) = w.get() else {
            return Some(Visit { counted: false });
        };
        let cost = cost(walk.depth);
        if walk.exceeded || walk.depth >= walk.max_depth || walk.steps_left < cost {
            walk.exceeded = true;
            w.set(Some(walk));
            return None;
        }
        walk.depth += 1;
        walk.steps_left -= cost;
        w.set(Some(walk));
        Some(Visit { counted: true })
    })
}

/// Whether a walk on this thread went past a bound: loops over a container's items
/// check it, so a stopped walk of a billion-item sequence ends at once.
pub(crate) fn stopped() -> bool {
    WALK.with(|w| w.get().is_some_and(|w| w.exceeded))
}

/// The error a serializer returns for a walk stopped by [`visit`].
pub(crate) const STOPPED: &str = "a value nested or shared beyond the walk limits";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    fn nested(depth: usize) -> Value {
        (0..depth).fold(Value::from(1), |v, _| Value::from(vec![v]))
    }

    #[test]
    fn walks_within_the_limits_are_untouched() {
        let limits = WalkLimits {
            max_depth: 10,
            max_steps: 100,
        };
        let (s, exceeded) = with_walk_limits(limits, || nested(5).to_string());
        assert_eq!(s, "[[[[[1]]]]]");
        assert!(!exceeded);
    }

    #[test]
    fn a_walk_too_deep_fails_and_says_so() {
        let limits = WalkLimits {
            max_depth: 10,
            max_steps: 100,
        };
        let v = nested(20);
        let ((printed, equal), exceeded) =
            with_walk_limits(limits, || (v.to_string(), v == nested(20)));
        assert_eq!(printed, "[[[[[[[[[[]]]]]]]]]]", "printing stops at the tenth level");
        assert!(!equal, "a stopped comparison is no answer, and says unequal");
        assert!(exceeded);
        // Outside the limits the same walks succeed again.
        assert_eq!(v, nested(20));
    }

    #[test]
    fn a_walk_of_a_shared_value_stops_after_its_steps() {
        let mut v = Value::from(1);
        for _ in 0..64 {
            v = Value::from(vec![v.clone(), v]);
        }
        let limits = WalkLimits {
            max_depth: 100,
            max_steps: 10_000,
        };
        let (json, exceeded) = with_walk_limits(limits, || serde_json::to_string(&v));
        assert!(json.unwrap_err().to_string().contains(STOPPED));
        assert!(exceeded);
    }
}
