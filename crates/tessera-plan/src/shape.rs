//! The few numbers of a model's shape that sharding decisions depend on.

use serde::{Deserialize, Serialize};

/// Shape of a Llama-family transformer, as far as sharding is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Width of the residual stream.
    pub hidden: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Number of query heads.
    pub heads: usize,
    /// Number of key/value heads (grouped-query attention when below `heads`).
    pub kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate: usize,
    /// Vocabulary size (rows of the embedding and of the output head).
    pub vocab: usize,
    /// True when the output head reuses the embedding matrix.
    pub tied_embeddings: bool,
    /// True when q/k/v projections carry biases (Qwen2).
    pub qkv_bias: bool,
}

impl ModelShape {
    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// The shape of SmolLM2-135M, for tests and examples.
    pub fn smollm2_135m() -> Self {
        Self {
            hidden: 576,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            intermediate: 1536,
            vocab: 49152,
            tied_embeddings: true,
            qkv_bias: false,
        }
    }

    /// The shape of Llama-3-8B, for cost projections without weights.
    pub fn llama3_8b() -> Self {
        Self {
            hidden: 4096,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 14336,
            vocab: 128256,
            tied_embeddings: false,
            qkv_bias: false,
        }
    }

    /// Total parameter count of the model.
    pub fn parameters(&self) -> usize {
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        let attn = self.hidden * (q + 2 * kv) + q * self.hidden;
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 };
        let mlp = 3 * self.hidden * self.intermediate;
        let norms = 2 * self.hidden;
        let per_layer = attn + bias + mlp + norms;
        let head = if self.tied_embeddings {
            0
        } else {
            self.vocab * self.hidden
        };
        self.layers * per_layer + self.vocab * self.hidden + head + self.hidden
    }
}
