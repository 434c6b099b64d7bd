//! The `sluice` binary, built inside the test package so that the integration
//! tests can start it as a process (`CARGO_BIN_EXE_sluice-under-test`) and send it
//! signals, including `kill -9`.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
