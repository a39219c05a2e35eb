//! Splitting a long text into chunks that each fit a token budget: paragraphs first, then
//! sentences, then words, packed greedily. Token counts decide, through a counting
//! function, so the rule is testable without a tokenizer.

/// A piece of text and the separator that joins it to the piece before it.
struct Unit {
    sep: &'static str,
    text: String,
}

/// Splits `text` into chunks of at most `budget` tokens as counted by `count`, cutting at
/// paragraph (`\n\n`) boundaries when possible, else sentence ends, else spaces, and
/// packing neighbouring pieces together while they fit. Empty paragraphs are dropped.
pub fn split_to_fit(
    text: &str,
    budget: usize,
    count: &mut dyn FnMut(&str) -> usize,
) -> Vec<String> {
    let budget = budget.max(1);
    let mut units = Vec::new();
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if count(paragraph) <= budget {
            units.push(Unit {
                sep: "\n\n",
                text: paragraph.to_string(),
            });
            continue;
        }
        let mut sep = "\n\n";
        for sentence in sentences(paragraph) {
            if count(sentence) <= budget {
                units.push(Unit {
                    sep,
                    text: sentence.to_string(),
                });
            } else {
                for (k, piece) in pack_words(sentence, budget, count).into_iter().enumerate() {
                    units.push(Unit {
                        sep: if k == 0 { sep } else { " " },
                        text: piece,
                    });
                }
            }
            sep = " ";
        }
    }
    pack(units, budget, count)
}

/// Sentences of `p`: cut after `.`, `!` or `?` followed by whitespace (trimmed).
fn sentences(p: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = p.char_indices().collect();
    for w in chars.windows(2) {
        let ((i, c), (_, next)) = (w[0], w[1]);
        if matches!(c, '.' | '!' | '?') && next.is_whitespace() {
            let end = i + c.len_utf8();
            out.push(p[start..end].trim());
            start = end;
        }
    }
    out.push(p[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// Words of `s` packed into pieces of at most `budget` tokens; a word longer than the
/// budget on its own is cut by characters.
fn pack_words(s: &str, budget: usize, count: &mut dyn FnMut(&str) -> usize) -> Vec<String> {
    let mut units = Vec::new();
    for word in s.split_whitespace() {
        if count(word) <= budget {
            units.push(Unit {
                sep: " ",
                text: word.to_string(),
            });
            continue;
        }
        let mut piece = String::new();
        for c in word.chars() {
            piece.push(c);
            if count(&piece) > budget {
                piece.pop();
                if !piece.is_empty() {
                    units.push(Unit {
                        sep: "",
                        text: std::mem::take(&mut piece),
                    });
                }
                piece.push(c);
            }
        }
        if !piece.is_empty() {
            units.push(Unit {
                sep: "",
                text: piece,
            });
        }
    }
    pack(units, budget, count)
}

/// Joins neighbouring units while the joined text stays within `budget`.
fn pack(units: Vec<Unit>, budget: usize, count: &mut dyn FnMut(&str) -> usize) -> Vec<String> {
    let mut chunks: Vec<String> = Vec::new();
    let mut current = String::new();
    for unit in units {
        if current.is_empty() {
            current = unit.text;
            continue;
        }
        let joined = format!("{current}{}{}", unit.sep, unit.text);
        if count(&joined) <= budget {
            current = joined;
        } else {
            chunks.push(std::mem::replace(&mut current, unit.text));
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn every_chunk_fits_and_no_word_is_lost() {
        let para = "One two three. Four five six seven! Eight nine ten eleven twelve?";
        let text = format!("{para}\n\n{para}\n\nshort one\n\n{}", "w ".repeat(30));
        for budget in [3, 5, 8, 13, 40] {
            let chunks = split_to_fit(&text, budget, &mut words);
            assert!(
                chunks.iter().all(|c| words(c) <= budget),
                "budget {budget}: {chunks:?}"
            );
            let total: usize = chunks.iter().map(|c| words(c)).sum();
            assert_eq!(total, words(&text), "budget {budget}");
        }
    }

    #[test]
    fn paragraph_boundaries_are_preferred_over_sentences() {
        let text = "a b c. d e f.\n\ng h i. j k l.";
        let chunks = split_to_fit(text, 6, &mut words);
        assert_eq!(chunks, vec!["a b c. d e f.", "g h i. j k l."]);
        let chunks = split_to_fit(text, 4, &mut words);
        assert_eq!(chunks, vec!["a b c.", "d e f.", "g h i.", "j k l."]);
    }

    #[test]
    fn a_word_longer_than_the_budget_is_cut_by_characters() {
        let mut chars = |s: &str| s.chars().count();
        let chunks = split_to_fit("abcdefghij", 4, &mut chars);
        assert_eq!(chunks, vec!["abcd", "efgh", "ij"]);
    }
}
