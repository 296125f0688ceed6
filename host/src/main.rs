//! The `wasmhive` binary.

fn main() -> std::process::ExitCode {
    wasmhive::cli::main()
}
