//! tessera-plan (work in progress).
