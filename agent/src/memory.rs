//! The agent's heap as the C allocator keeps it: a resident-memory budget of 20 MiB leaves no
//! room for memory glibc holds free and does not give back.

/// Returns the heap's free pages to the kernel (glibc keeps them otherwise), after a passing
/// peak such as the kernel's BTF parsed to load the eBPF program.
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
