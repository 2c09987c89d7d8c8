//! An anonymous shared mapping, made in the main process before the server forks so that every
//! child (SIP workers, the refresher, RPC/MI processes) sees it at the same address.
//!
//! Nothing here is Rust-shared state: Rust statics and heap are copied at fork, this memory is not.
//! The kernel hands out zeroed pages lazily, so reserved but untouched capacity costs nothing.

use std::io;
use std::ptr::NonNull;

pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; every access to its contents goes through atomics.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: NonNull::new(p.cast()).expect("mmap returned null"), len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Gives the pages of `[off, off + len)` back to the kernel; they read as zeros afterwards
    /// (in every process: the mapping is shared memory, so MADV_REMOVE frees its backing rather
    /// than this process's view of it). `off` is page-aligned; `len` is rounded up to pages.
    pub fn release(&self, off: usize, len: usize) -> io::Result<()> {
        let len = ((len + 4095) & !4095).min(self.len.saturating_sub(off));
        if len == 0 {
            return Ok(());
        }
        debug_assert_eq!(off % 4096, 0);
        // SAFETY: the range lies inside the mapping; every access to its contents is atomic and
        // zero is a valid value for all of it.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().add(off).cast(), len, libc::MADV_REMOVE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped; no reference into it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
