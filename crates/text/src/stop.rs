//! Stop sequences over streamed text.
//!
//! A stop string may arrive split across tokens (`"\n\nUs"` + `"er:"`), so text that could
//! still be the start of a stop string is held back until it either completes the stop
//! (then it and everything after are dropped) or cannot anymore (then it is released).
//! The stop string itself is never part of the output, as in the OpenAI API.

/// Matches up to a handful of stop strings against a text stream.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What one push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text safe to emit now.
    pub text: String,
    /// A stop string matched: the sequence ends and `text` is the last of it.
    pub stopped: bool,
}

impl StopMatcher {
    /// Empty strings are ignored (they would stop before the first token).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome {
                text: text.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(text);
        // Earliest complete match wins.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(pos) = hit {
            let out = self.held[..pos].to_owned();
            self.held.clear();
            return StopOutcome {
                text: out,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopOutcome {
            text: out,
            stopped: false,
        }
    }

    /// The sequence ended for another reason: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char
/// boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop
                    .as_bytes()
                    .starts_with(&text.as_bytes()[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.text);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_excluded() {
        assert_eq!(
            run(&["User:"], &["Hi\n", "Us", "er:", " more"]),
            ("Hi\n".into(), true)
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(
            run(&["User:"], &["Us", "ually", " fine"]),
            ("Usually fine".into(), false)
        );
        assert_eq!(run(&["abc"], &["ab"]), ("ab".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["c", "b"], &["abc"]), ("a".into(), true));
    }

    #[test]
    fn multibyte_stops() {
        assert_eq!(
            run(&["名将"], &["传奇", "名", "将有"]),
            ("传奇".into(), true)
        );
    }

    #[test]
    fn holds_back_only_what_could_match() {
        let mut m = StopMatcher::new(vec!["xyz".into()]);
        assert_eq!(m.push("hello x").text, "hello ");
        assert_eq!(m.push("a").text, "xa");
    }
}
