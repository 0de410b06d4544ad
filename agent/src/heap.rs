//! Handing freed heap memory back to the system after the passes that free much: glibc keeps
//! it otherwise, scattered among what is still held (at 100,000 endpoints, tens of MB after a
//! snapshot's decoding, a dump of the kernel's tables or deriving every network again).

/// Hands the heap's free pages back to the system.
pub fn give_back_freed() {
    // SAFETY: malloc_trim only walks glibc's own heap, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
