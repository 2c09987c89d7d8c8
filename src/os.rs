//! The boundary with the operating system, as ffi.rs is the one with the host: every libc call
//! of the core is here, behind a safe function.
//!
//! First, an anonymous shared mapping, made in the main process before the server forks so that
//! every child (SIP workers, the refresher, RPC/MI processes) sees it at the same address.
//!
//! Nothing here is Rust-shared state: Rust statics and heap are copied at fork, this memory is not.
//! The kernel hands out zeroed pages lazily, so reserved but untouched capacity costs nothing.

use std::io;
use std::ptr::NonNull;

pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    huge: bool,
}

/// The size of a huge page as `MAP_HUGETLB` maps them without a size flag (x86-64's default).
pub const HUGE_PAGE: usize = 2 << 20;

// SAFETY: the mapping is plain memory; every access to its contents goes through atomics.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(len: usize) -> io::Result<Mapping> {
        Mapping::map(len, libc::MAP_NORESERVE, false)
    }

    /// The same in huge pages (`MAP_HUGETLB`), `len` rounded up to 2 MB: one TLB entry covers
    /// 2 MB instead of 4 KB. The pages come from the pool the operator reserved
    /// (`vm.nr_hugepages`), and all of `len` is reserved from it now (no `MAP_NORESERVE`, which
    /// for hugetlb would defer the shortage to a SIGBUS at the first touch): too few free huge
    /// pages is an error here (ENOMEM), which the caller answers with `new`.
    pub fn new_huge(len: usize) -> io::Result<Mapping> {
        Mapping::map(len.next_multiple_of(HUGE_PAGE), libc::MAP_HUGETLB, true)
    }

    fn map(len: usize, flags: libc::c_int, huge: bool) -> io::Result<Mapping> {
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        match NonNull::new(p.cast::<u8>()) {
            Some(ptr) if p != libc::MAP_FAILED => Ok(Mapping { ptr, len, huge }),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Whether this mapping is in huge pages.
    pub fn is_huge(&self) -> bool {
        self.huge
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
    ///
    /// Not in huge pages: punching a hole in a hugetlb mapping also gives its reservation back
    /// to the pool, so the next publish would fault pages that another program may have taken
    /// meanwhile, and a hugetlb fault without a page is a SIGBUS in the refresher. The pages
    /// stay (they are the operator's dedicated pool anyway, reserved whole at start).
    pub fn release(&self, off: usize, len: usize) -> io::Result<()> {
        if self.huge {
            return Err(io::ErrorKind::Unsupported.into());
        }
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

/// The host's name, for `node_id`'s default.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let n = buf.iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..n].to_vec()).ok().filter(|h| !h.is_empty())
}

/// 64 random bits from the kernel; without an entropy source, time and pid (unique enough for
/// the names they make: epochs, writers, nonces).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == b.len() as isize {
        return u64::from_le_bytes(b);
    }
    crate::clock::unix_now() << 20 ^ std::process::id() as u64 ^ std::time::Instant::now().elapsed().as_nanos() as u64
}

/// The machine's memory, for `max_entries`'s bound.
pub fn phys_mem() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages > 0 && size > 0).then(|| pages as u64 * size as u64)
}

/// The name (when it has one) and uid of this process's effective user, for messages.
pub fn effective_user() -> (Option<String>, u32) {
    // SAFETY: geteuid has no preconditions; getpwuid_r writes only into the buffers we pass, and
    // `pw_name` points into `buf` when it returns 0 with a non-null result.
    unsafe {
        let uid = libc::geteuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = [0 as libc::c_char; 1024];
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let found = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) == 0 && !res.is_null();
        (found.then(|| std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned()), uid)
    }
}

/// Whether a process with this pid exists (ours or not).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Set by SIGTERM/SIGINT in the refresher of a fleet node: it lets its lease go, then exits.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The hosts end their children at once on SIGTERM; a leader that did so would leave its lease
/// to expire (`leader_ttl` without a leader). The refresher's own handler only sets a flag that
/// the loop sees within a tick. Installed in the refresher process only, in fleet mode only.
pub fn install_stop_handler() {
    // SAFETY: a handler that only stores to an atomic is async-signal-safe; the sigaction
    // struct is fully initialised (zeroed, then the handler and an empty mask).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// Whether SIGTERM or SIGINT came since install_stop_handler.
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Ends this process at once, as the host's own handler would have.
pub fn exit_now() -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(0) }
}

/// Sleeps until `word` no longer holds `expected`, a `wake` on it, or `timeout`, whichever is
/// first (a futex: the word may live in memory shared between processes, as the stats do).
/// Returns at once when the word already differs. Spurious returns are harmless to callers,
/// which look at the word again.
pub fn wait_on(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the aligned 32-bit word, which outlives the call; the timeout is a
    // valid relative timespec. Not FUTEX_PRIVATE: the waker may be another process.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes whoever sleeps in `wait_on(word, …)`, in any process that maps it.
pub fn wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the word's address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}
