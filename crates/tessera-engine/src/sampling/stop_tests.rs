//! Tests of the stop-string matcher against a one-shot reference, for every split of the text.

use super::*;
use proptest::prelude::*;

// ----------------------------------------------------------- StopMatcher

fn stops(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// One-shot search: the first position where a stop string ends (longest on ties).
fn reference_stop(text: &str, stops: &[String]) -> (String, bool) {
    for end in (1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
        let head = &text[..end];
        let longest = stops
            .iter()
            .filter(|s| !s.is_empty() && head.ends_with(s.as_str()))
            .map(String::len)
            .max();
        if let Some(len) = longest {
            return (head[..end - len].to_string(), true);
        }
    }
    (text.to_string(), false)
}

/// Streams `deltas` and returns (everything emitted, stopped); checks `text()`.
fn stream(deltas: &[&str], stops: &[String]) -> (String, bool) {
    let mut matcher = StopMatcher::new(stops);
    let mut emitted = String::new();
    let mut stopped = false;
    for delta in deltas {
        let step = matcher.push(delta);
        assert!(!stopped || step.emit.is_empty(), "emitted after a stop");
        emitted.push_str(&step.emit);
        stopped |= step.stopped;
    }
    emitted.push_str(&matcher.finish());
    assert_eq!(matcher.text(), emitted);
    assert_eq!(matcher.stopped(), stopped);
    (emitted, stopped)
}

fn boundaries(text: &str) -> Vec<usize> {
    (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

#[test]
fn stop_matcher_matches_one_shot_for_every_split() {
    let cases: [(&str, &[&str]); 8] = [
        ("Hello world. The end. More", &["The end"]),
        ("abcabcabd tail", &["abd"]),
        ("aaab", &["aab"]),
        ("xxabcd", &["abcd", "bc"]),
        ("one stop two stops", &["stops", "stop"]),
        ("héllo wörld", &["ö", "wör"]),
        ("no stop here at all", &["STOP", "zz"]),
        ("end at the very end", &["very end"]),
    ];
    for (text, list) in cases {
        let stops = stops(list);
        let expected = reference_stop(text, &stops);
        let cuts = boundaries(text);
        for &i in &cuts {
            for &j in cuts.iter().filter(|&&j| j >= i) {
                let deltas = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(stream(&deltas, &stops), expected, "{text:?} split {i}, {j}");
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(stream(&chars, &stops), expected, "{text:?} by chars");
    }
}

#[test]
fn stop_matcher_holds_back_a_partial_match_until_it_fails() {
    let mut matcher = StopMatcher::new(&stops(&["END"]));
    assert_eq!(matcher.push("abcE").emit, "abc");
    assert_eq!(matcher.push("N").emit, "");
    let step = matcher.push("x");
    assert_eq!((step.emit.as_str(), step.stopped), ("ENx", false));
    assert_eq!(matcher.push("EN").emit, "");
    assert_eq!(matcher.finish(), "EN");
    assert_eq!(matcher.text(), "abcENxEN");
}

#[test]
fn stop_matcher_cuts_before_the_stop_and_reports_it() {
    let mut matcher = StopMatcher::new(&stops(&["\n\n", "END"]));
    assert_eq!(matcher.push("answer: 4").emit, "answer: 4");
    assert_eq!(matcher.push(" E").emit, " ");
    let step = matcher.push("ND and more");
    assert_eq!((step.emit.as_str(), step.stopped), ("", true));
    assert_eq!(matcher.push("later").emit, "");
    assert_eq!(matcher.finish(), "");
    assert_eq!(matcher.text(), "answer: 4 ");
    assert_eq!(matcher.matched_stop(), Some("END"));
}

#[test]
fn stop_matcher_without_stops_emits_everything_at_once() {
    let mut matcher = StopMatcher::new(&stops(&[""]));
    assert_eq!(matcher.push("abc").emit, "abc");
    assert!(!matcher.stopped());
}

proptest! {
    #[test]
    fn stop_matcher_is_independent_of_delta_boundaries(
        text in "[abé]{0,24}",
        list in proptest::collection::vec("[abé]{1,4}", 1..4),
        splits in proptest::collection::vec(0usize..64, 0..8),
    ) {
        let stops: Vec<String> = list;
        let cuts = boundaries(&text);
        let mut points: Vec<usize> = splits.iter().map(|s| cuts[s % cuts.len()]).collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        let deltas: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        prop_assert_eq!(stream(&deltas, &stops), reference_stop(&text, &stops));
    }
}
