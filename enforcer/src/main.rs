fn main() -> std::process::ExitCode {
    enforcer::commands::main()
}
