fn main() -> std::process::ExitCode {
    vnet_migrate::cli::main()
}
