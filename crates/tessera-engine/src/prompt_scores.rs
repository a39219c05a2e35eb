//! Prompt logprobs: each prompt token scored under the logits of the position before it,
//! gathered chunk by chunk while the prompt is computed.

use crate::engine::TokenLogprobs;

/// Prompt logprobs being gathered, row by row, until the prompt is computed.
pub(crate) struct PromptScores {
    /// The prompt's token ids.
    pub(crate) prompt: Vec<u32>,
    /// Top alternatives per position.
    pub(crate) top: usize,
    /// One entry per prompt token; entry `i` comes from the logits at position `i - 1`.
    pub(crate) scores: Vec<Option<TokenLogprobs>>,
}

impl PromptScores {
    /// Scores the prompt tokens that follow positions `start..start + rows` from `logits`
    /// (those positions' rows, in order).
    pub(crate) fn record(&mut self, start: usize, logits: &[f32], vocab: usize) {
        for (offset, row) in logits.chunks_exact(vocab).enumerate() {
            let next = start + offset + 1;
            let Some(&token) = self.prompt.get(next) else {
                break;
            };
            let (logprob, top) = crate::sampling::token_logprobs(row, token, self.top);
            self.scores[next] = Some(TokenLogprobs { logprob, top });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_scores_the_tokens_after_its_positions_and_stops_at_the_prompt_end() {
        let vocab = 4;
        let mut p = PromptScores {
            prompt: vec![2, 0, 3],
            top: 1,
            scores: vec![None; 3],
        };
        // Rows of positions 1 and 2: position 1 scores token 2 (id 3); position 2 scores
        // nothing (it is the last prompt position).
        let rows = [0.0, 0.0, 0.0, 5.0, 9.0, 0.0, 0.0, 0.0];
        p.record(1, &rows, vocab);
        assert_eq!((p.scores[0].as_ref(), p.scores[1].as_ref()), (None, None));
        let s = p.scores[2].as_ref().unwrap();
        assert_eq!(s.top.len(), 1);
        assert_eq!(s.top[0].0, 3);
        let norm = (3.0f64 + 5.0f64.exp()).ln();
        assert!((f64::from(s.logprob) - (5.0 - norm)).abs() < 1e-6);
        // Position 0 scores token 1 (id 0).
        p.record(0, &[1.0, 1.0, 1.0, 1.0], vocab);
        let s = p.scores[1].as_ref().unwrap();
        assert!((f64::from(s.logprob) - (0.25f64).ln()).abs() < 1e-6);
    }
}
