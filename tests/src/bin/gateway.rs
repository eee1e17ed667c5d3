//! The gateway binary as the end-to-end tests run it (same code as `mailgate`; a bin of this
//! package so tests can find it through `CARGO_BIN_EXE_`).
fn main() -> std::process::ExitCode {
    mailgate::cli::main()
}
