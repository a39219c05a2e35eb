//! Device buffers of the emulation: anonymous mappings with a `PROT_NONE` page on each
//! side of the data, so a kernel that indexes past either end faults at once.

use std::marker::PhantomData;

use crate::EmuError;

const PAGE: usize = 4096;

/// Where the data sits in its mapping: flush against the guard page after it (an index
/// past the end faults) or before it (a negative index faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The last element ends where the trailing guard page begins.
    End,
    /// The first element starts where the leading guard page ends.
    Start,
}

/// `len` values of `T` in guarded memory.
pub struct DevBuf<T: Copy> {
    base: *mut libc::c_void,
    map_len: usize,
    data: *mut T,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Copy> DevBuf<T> {
    /// A buffer holding a copy of `values`.
    pub fn from_slice(values: &[T], place: Placement) -> Result<Self, EmuError> {
        let bytes = std::mem::size_of_val(values);
        let inner = bytes.div_ceil(PAGE).max(1) * PAGE;
        let map_len = inner + 2 * PAGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(EmuError::Map { bytes: map_len });
        }
        let first = base as usize + PAGE;
        // SAFETY: both guard pages lie inside the mapping just made.
        let guarded = unsafe {
            libc::mprotect(base, PAGE, libc::PROT_NONE) == 0
                && libc::mprotect((first + inner) as *mut libc::c_void, PAGE, libc::PROT_NONE) == 0
        };
        let start = match place {
            Placement::Start => first,
            // Element alignment holds: `bytes` is a multiple of size_of::<T>() and pages
            // are aligned beyond any T used here.
            Placement::End => first + inner - bytes,
        };
        let buf = Self {
            base,
            map_len,
            data: start as *mut T,
            len: values.len(),
            _t: PhantomData,
        };
        if !guarded {
            return Err(EmuError::Map { bytes: map_len });
        }
        // SAFETY: `data` points at `len` writable, suitably aligned slots of T that do not
        // overlap `values`.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), buf.data, values.len()) };
        Ok(buf)
    }

    /// A buffer of `len` copies of `fill` (NaN poison for outputs).
    pub fn filled(len: usize, fill: T, place: Placement) -> Result<Self, EmuError> {
        Self::from_slice(&vec![fill; len], place)
    }

    /// The device pointer a kernel reads.
    pub fn ptr(&self) -> *const T {
        self.data
    }

    /// The device pointer a kernel writes.
    pub fn mut_ptr(&mut self) -> *mut T {
        self.data
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A host copy of the values.
    pub fn to_vec(&self) -> Vec<T> {
        // SAFETY: `data` holds `len` initialised values of T for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }.to_vec()
    }
}

impl<T: Copy> Drop for DevBuf<T> {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are the mapping made in `from_slice`, unmapped once.
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}
