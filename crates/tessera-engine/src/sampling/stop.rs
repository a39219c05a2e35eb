//! Stop strings in streamed text: what may be shown now, and whether generation ends.

/// What [`StopMatcher::push`] found in one text delta.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is safe to show now.
    pub emit: String,
    /// A stop string completed: generation ends, nothing more is emitted.
    pub stopped: bool,
}

/// Finds stop strings in streamed text and holds back what could still become one.
///
/// A stop fires at the first position where some stop string ends (the longest one if
/// several end there), as if text arrived one character at a time; so the outcome does
/// not depend on how the text is split into deltas. The stop string and everything
/// after it are excluded from the output, as in OpenAI's API.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Length in bytes of the longest stop string.
    longest: usize,
    /// Received text not emitted yet: a suffix that may begin a stop string.
    pending: String,
    /// All emitted text.
    text: String,
    /// Index in `stops` of the stop string that fired.
    matched: Option<usize>,
}

impl StopMatcher {
    /// Creates a matcher for `stops`; empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            longest,
            ..Self::default()
        }
    }

    /// Feeds the next text delta; returns what can be shown and whether a stop fired.
    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.matched.is_some() {
            return StopStep {
                emit: String::new(),
                stopped: true,
            };
        }
        self.pending.push_str(delta);
        if let Some((start, which)) = first_completed(&self.pending, &self.stops) {
            self.pending.truncate(start);
            let emit = std::mem::take(&mut self.pending);
            self.text.push_str(&emit);
            self.matched = Some(which);
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let cut = self.held_back_from();
        let emit: String = self.pending.drain(..cut).collect();
        self.text.push_str(&emit);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Ends the stream without a stop: returns the held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.text.push_str(&rest);
        rest
    }

    /// All text emitted so far; after a stop, the final output, cut before the stop string.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether a stop string fired.
    pub fn stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that fired, for the response's `stop_reason`.
    pub fn matched_stop(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Byte offset of the earliest suffix of `pending` that is a proper prefix of a stop
    /// string; text before it can never be part of a match.
    fn held_back_from(&self) -> usize {
        let len = self.pending.len();
        let from = len.saturating_sub(self.longest.saturating_sub(1));
        (from..len)
            .filter(|&s| self.pending.is_char_boundary(s))
            .find(|&s| {
                let tail = &self.pending[s..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(len)
    }
}

/// `(start, stop index)` of the stop string that ends first in `text`, the longest on ties.
fn first_completed(text: &str, stops: &[String]) -> Option<(usize, usize)> {
    stops
        .iter()
        .enumerate()
        .filter_map(|(i, stop)| text.find(stop.as_str()).map(|at| (at + stop.len(), at, i)))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, start, i)| (start, i))
}

#[cfg(test)]
#[path = "stop_tests.rs"]
mod tests;
