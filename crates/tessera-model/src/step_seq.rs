//! The contract of one forward pass: which sequences run, over which tokens, positions
//! and cache blocks, and which rows of logits come back. The engine's scheduler builds
//! these, the coordinator sends them (to threads or, serialized, to other nodes) and every
//! rank consumes them as they are: one type from scheduler to rank, no conversions.

/// Which positions' logits a forward pass returns for one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogitRows {
    /// None (a prefill chunk that does not reach the end of the prompt).
    None,
    /// Only the last position's (generation).
    Last,
    /// Every position's (scoring, tests).
    All,
}

impl LogitRows {
    /// How many rows of logits a sequence of `tokens` new tokens gets: its last rows.
    pub fn count(self, tokens: usize) -> usize {
        match self {
            Self::None => 0,
            Self::Last => tokens.min(1),
            Self::All => tokens,
        }
    }
}

/// The batch rows (token positions across `seqs`, in order) whose logits the sequences ask for.
pub fn logit_rows(seqs: &[StepSeq]) -> Vec<usize> {
    let mut rows = Vec::new();
    let mut offset = 0;
    for s in seqs {
        let n = s.tokens.len();
        offset += n;
        rows.extend(offset - s.logits.count(n)..offset);
    }
    rows
}

/// One sequence's share of a batched forward pass.
///
/// Its `tokens` sit at positions `start..start + tokens.len()`; keys and values of
/// positions `0..start` are already in the cache blocks listed by `block_table`
/// (`block_table[p / block_size]` holds position `p`), which must also cover the new tokens:
///
/// ```text
///   block_size 4, start 6, tokens [t6 t7 t8]
///   block_table [5, 2, 9]
///     block 5: p0 p1 p2 p3     cached
///     block 2: p4 p5 t6 t7     p4 p5 cached, t6 t7 written this step
///     block 9: t8 .. .. ..     written this step
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepSeq {
    /// The engine's id of the sequence (the model does not read it).
    pub id: u64,
    /// New token ids.
    pub tokens: Vec<u32>,
    /// Position of the first new token.
    pub start: usize,
    /// Cache blocks of the sequence, in position order.
    pub block_table: Vec<u32>,
    /// Which of its positions need logits.
    pub logits: LogitRows,
}

impl StepSeq {
    /// One past the position of the last new token.
    pub fn end(&self) -> usize {
        self.start + self.tokens.len()
    }
}
