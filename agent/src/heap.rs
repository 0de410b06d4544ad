//! Keeping the agent's heap small: glibc keeps freed memory from the system, scattered among
//! what is still held, in one arena per thread that allocated (at 100,000 endpoints, tens of MB
//! after a snapshot's decoding, a dump of the kernel's tables or deriving every network again).

/// Makes every thread allocate from one arena. An agent is idle but for short passes, so its
/// threads seldom wait on each other's allocations; each arena of its own kept about 20 MB of an
/// agent holding 100,000 entries.
pub fn one_arena() {
    // SAFETY: mallopt only sets a glibc tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the heap's free pages back to the system.
pub fn give_back_freed() {
    // SAFETY: malloc_trim only walks glibc's own heap, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
