//! The gateway binary as the end-to-end tests run it (same code and allocator as `mailgate`;
//! a bin of this package so tests can find it through `CARGO_BIN_EXE_`).
#[global_allocator]
static ALLOC: mailgate::alloc::GatewayAlloc = mailgate::alloc::GatewayAlloc;

fn main() -> std::process::ExitCode {
    mailgate::alloc::init();
    mailgate::cli::main()
}
