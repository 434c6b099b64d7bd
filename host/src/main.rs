//! The `sluice` binary: a small `main` around [`sluice::cli::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    match sluice::cli::run() {
        Ok(code) => code,
        Err(error) => {
            // The whole chain: "loading plugins/x.wasm: corrupt or truncated component: ...".
            eprintln!("sluice: error: {error:#}");
            ExitCode::from(1)
        }
    }
}
