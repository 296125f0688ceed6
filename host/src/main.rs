//! The `wasmhive` binary.

fn main() -> std::process::ExitCode {
    // First, while no other thread exists (setting the environment is sound then).
    wasmhive::telemetry::no_library_backtraces();
    wasmhive::cli::main()
}
