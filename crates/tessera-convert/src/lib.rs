//! tessera-convert (work in progress).
