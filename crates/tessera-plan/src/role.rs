//! Weight kinds (which tensor of the model) and roles (which slice of it a rank holds).

use serde::{Deserialize, Serialize};

use crate::shape::ModelShape;
use crate::span::Span;

/// Names the weights of a Llama-family model by role (Hugging Face names in `hf_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightKind {
    /// `model.embed_tokens.weight` `[vocab, hidden]`.
    Embedding,
    /// `self_attn.q_proj.weight` `[heads*head_dim, hidden]`.
    QProj,
    /// `self_attn.k_proj.weight` `[kv_heads*head_dim, hidden]`.
    KProj,
    /// `self_attn.v_proj.weight` `[kv_heads*head_dim, hidden]`.
    VProj,
    /// `self_attn.q_proj.bias` `[heads*head_dim]`.
    QBias,
    /// `self_attn.k_proj.bias` `[kv_heads*head_dim]`.
    KBias,
    /// `self_attn.v_proj.bias` `[kv_heads*head_dim]`.
    VBias,
    /// `self_attn.o_proj.weight` `[hidden, heads*head_dim]`.
    OProj,
    /// `mlp.gate_proj.weight` `[intermediate, hidden]`.
    GateProj,
    /// `mlp.up_proj.weight` `[intermediate, hidden]`.
    UpProj,
    /// `mlp.down_proj.weight` `[hidden, intermediate]`.
    DownProj,
    /// `input_layernorm.weight` `[hidden]`.
    InputNorm,
    /// `post_attention_layernorm.weight` `[hidden]`.
    PostAttentionNorm,
    /// `model.norm.weight` `[hidden]`.
    FinalNorm,
    /// `lm_head.weight` `[vocab, hidden]` (the embedding when tied).
    LmHead,
}

impl WeightKind {
    /// Weights of one transformer block, in file order.
    pub const LAYER: [WeightKind; 12] = [
        Self::InputNorm,
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::QBias,
        Self::KBias,
        Self::VBias,
        Self::OProj,
        Self::PostAttentionNorm,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    /// The Hugging Face tensor name of this weight in `layer` (ignored for global weights).
    pub fn hf_name(self, layer: usize) -> String {
        let l = |s: &str| format!("model.layers.{layer}.{s}");
        match self {
            Self::Embedding => "model.embed_tokens.weight".into(),
            Self::QProj => l("self_attn.q_proj.weight"),
            Self::KProj => l("self_attn.k_proj.weight"),
            Self::VProj => l("self_attn.v_proj.weight"),
            Self::QBias => l("self_attn.q_proj.bias"),
            Self::KBias => l("self_attn.k_proj.bias"),
            Self::VBias => l("self_attn.v_proj.bias"),
            Self::OProj => l("self_attn.o_proj.weight"),
            Self::GateProj => l("mlp.gate_proj.weight"),
            Self::UpProj => l("mlp.up_proj.weight"),
            Self::DownProj => l("mlp.down_proj.weight"),
            Self::InputNorm => l("input_layernorm.weight"),
            Self::PostAttentionNorm => l("post_attention_layernorm.weight"),
            Self::FinalNorm => "model.norm.weight".into(),
            Self::LmHead => "lm_head.weight".into(),
        }
    }

    /// True for biases, which exist only when the model has q/k/v biases.
    pub fn is_bias(self) -> bool {
        matches!(self, Self::QBias | Self::KBias | Self::VBias)
    }

    /// Full shape `[rows, cols]` (vectors: `[len, 1]`) of this weight in `shape`.
    pub fn full_shape(self, shape: &ModelShape) -> [usize; 2] {
        let q = shape.heads * shape.head_dim;
        let kv = shape.kv_heads * shape.head_dim;
        match self {
            Self::Embedding | Self::LmHead => [shape.vocab, shape.hidden],
            Self::QProj => [q, shape.hidden],
            Self::KProj | Self::VProj => [kv, shape.hidden],
            Self::QBias => [q, 1],
            Self::KBias | Self::VBias => [kv, 1],
            Self::OProj => [shape.hidden, q],
            Self::GateProj | Self::UpProj => [shape.intermediate, shape.hidden],
            Self::DownProj => [shape.hidden, shape.intermediate],
            Self::InputNorm | Self::PostAttentionNorm | Self::FinalNorm => [shape.hidden, 1],
        }
    }
}

/// What one rank holds of one weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// The whole weight.
    Replicated,
    /// These rows (output features): the rank's output is a slice of the full output.
    SplitRows {
        /// Rows held.
        span: Span,
    },
    /// These columns (input features): the rank's output is a partial sum to be reduced.
    PartialSum {
        /// Columns held.
        span: Span,
    },
}

impl Role {
    /// Shape `[rows, cols]` of the slice this role selects from a weight of `full` shape.
    pub fn local_shape(&self, full: [usize; 2]) -> [usize; 2] {
        match self {
            Self::Replicated => full,
            Self::SplitRows { span } => [span.len(), full[1]],
            Self::PartialSum { span } => [full[0], span.len()],
        }
    }
}
