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
    let mut v: LineVec<T> = LineVec::with_capacity(LINE, len);
    advise_huge_pages(v.as_ptr().cast(), len * std::mem::size_of::<T>());
    v.resize(len, value);
    v
}

/// The size of an x86-64 transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// Asks Linux to back the whole 2 MiB pages inside `[ptr, ptr + bytes)` with transparent
/// huge pages, before anything touches them. A weight matrix streamed by a GEMV then costs
/// one TLB entry per 2 MiB instead of one per 4 KiB. Advice only: where the kernel says no
/// (THP `never`, no memory to compact), the buffer keeps its small pages.
fn advise_huge_pages(ptr: *const u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
        let end = (ptr as usize + bytes) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside an allocation this process owns; MADV_HUGEPAGE
            // changes only how its pages are backed, never their contents or validity.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
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
