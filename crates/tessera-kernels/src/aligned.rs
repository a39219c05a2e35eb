//! Buffers whose first element starts a cache line, wherever the allocator puts them, so
//! the kernels' 64-byte loads of a weight panel never straddle two lines.
//!
//! glibc serves a large allocation from its own mapping, 16 bytes into a page: every
//! 16-float panel row of such a buffer would span two cache lines.

use aligned_vec::{AVec, ConstAlign};

/// The alignment of every [`LineVec`]: one x86 cache line.
pub const LINE: usize = 64;

/// A vector whose data starts on a [`LINE`] boundary.
pub type LineVec<T> = AVec<T, ConstAlign<LINE>>;

/// `len` copies of `value` in a [`LineVec`].
pub fn line_vec<T: Clone>(value: T, len: usize) -> LineVec<T> {
    let mut v = LineVec::with_capacity(LINE, len);
    v.resize(len, value);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_vecs_start_on_a_line_whatever_their_size() {
        for len in [1, 3, 17, 4096, 1 << 20] {
            let v = line_vec(0u8, len);
            assert_eq!(v.as_ptr() as usize % LINE, 0, "len {len}");
            assert_eq!(v.len(), len);
            let w = line_vec(1.5f32, len);
            assert_eq!(w.as_ptr() as usize % LINE, 0, "len {len}");
            assert!(w.iter().all(|&x| x == 1.5));
        }
    }
}
