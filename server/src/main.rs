//! `hostwatch`: the collector and the CLI. Everything lives in the library; see `cli::main`.

/// mimalloc rather than glibc's malloc: a collector takes bursts of large reports (a fleet booting,
/// a collector restarted) and must give that memory back afterwards; glibc kept it (RSS stayed at
/// the burst's peak), and its arenas cost more per call under many threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hostwatch_server::cli::main()
}
