// mimalloc for small buffers (glibc malloc showed up as ~12% of the gateway's CPU under load),
// the system allocator for large ones (message contents): see `mailgate::alloc`.
#[global_allocator]
static ALLOC: mailgate::alloc::GatewayAlloc = mailgate::alloc::GatewayAlloc;

fn main() -> std::process::ExitCode {
    mailgate::alloc::init();
    mailgate::cli::main()
}
