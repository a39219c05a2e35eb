//! The collectives a plan implies: where they run, what they do, their payload per token.

use serde::{Deserialize, Serialize};

/// Where in the forward pass a collective runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "site", rename_all = "snake_case")]
pub enum CollectiveSite {
    /// After the vocabulary-parallel embedding lookup.
    Embedding,
    /// After the attention output projection of a layer.
    Attention {
        /// Layer index.
        layer: usize,
    },
    /// After the MLP down projection of a layer.
    Mlp {
        /// Layer index.
        layer: usize,
    },
    /// Before a split layer under sequence parallelism: the normed rows are gathered.
    Gather {
        /// Layer index.
        layer: usize,
        /// Which half of the layer the rows feed.
        half: LayerHalf,
    },
    /// Under sequence parallelism, before the final norm: the rows that need logits.
    FinalRows,
    /// After the vocabulary-parallel output head.
    LmHead,
}

/// The attention or the MLP half of a transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerHalf {
    /// Self-attention.
    Attention,
    /// The MLP.
    Mlp,
}

/// A collective operation the plan implies, with its payload per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collective {
    /// Where it runs.
    pub site: CollectiveSite,
    /// What it does.
    pub op: CollectiveOp,
    /// f32 elements each rank contributes per token.
    pub elems_per_token: usize,
}

/// The kind of a collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveOp {
    /// Sum of every rank's buffer, result on every rank.
    AllReduce,
    /// Concatenation of every rank's slice in rank order, result on every rank.
    AllGather,
    /// Sum of every rank's buffer, each rank keeping its own share of the rows.
    ReduceScatter,
}
