//! The agent's heap as the C allocator keeps it: a resident-memory budget of 20 MiB leaves no
//! room for memory glibc holds free and does not give back.

/// Returns the heap's free pages to the kernel (glibc keeps pages free inside the heap, where
/// a long-lived allocation pins the top, for good). Called after each full scan and report: the
/// scan's passing peak (thousands of sockets and processes read, compared and encoded) left
/// 1-2 MiB of free but resident pages behind, a different amount for each arrangement of the
/// heap; trimming costs a walk of the free lists every interval and the next scan's page faults.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: malloc_trim takes no pointer and only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
pub fn release_freed() {}
