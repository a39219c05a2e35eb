//! tessera-comm (work in progress).
