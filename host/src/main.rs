//! The `sluice` binary: a small `main` around [`sluice::cli::main`].

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
