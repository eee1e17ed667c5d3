fn main() -> std::process::ExitCode {
    mailgate::cli::main()
}
