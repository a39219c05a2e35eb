//! The `tessera` command: a thin entry point over `tessera_cli`.

fn main() -> std::process::ExitCode {
    tessera_cli::main()
}
