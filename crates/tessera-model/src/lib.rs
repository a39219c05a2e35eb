//! tessera-model (work in progress).
