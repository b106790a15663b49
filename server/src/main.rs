//! `hostwatch`: the collector and the CLI. Everything lives in the library; see `cli::main`.

/// mimalloc rather than glibc's malloc: a collector takes bursts of large reports (a fleet booting,
/// a collector restarted) and must give that memory back afterwards; glibc kept it (RSS stayed at
/// the burst's peak), and its arenas cost more per call under many threads. Built without
/// transparent huge pages (the workspace's `no_thp`): mimalloc asks for them on its arenas and
/// then gives back 64 KiB pieces, so each new touch of a split page zeroed 2 MiB again; at 5,000
/// agents booting, 39% of the collector's CPU went to clearing pages.
///
/// The `mimalloc` feature (on by default) is off only for a heap profile (see server/Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hostwatch_server::cli::main()
}
