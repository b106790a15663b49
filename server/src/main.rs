//! `hostwatch`: the collector and the CLI. Everything lives in the library; see `cli::main`.

fn main() -> std::process::ExitCode {
    hostwatch_server::cli::main()
}
