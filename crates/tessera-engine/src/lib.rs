//! tessera-engine (work in progress).
