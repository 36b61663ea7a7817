use clap::Parser;

use authplane::cli::{Cli, init_logging};

/// mimalloc: per-thread free lists instead of glibc's arenas, whose consolidation showed
/// up on the request path under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format());
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {}", describe(&anyhow::Error::from(e)));
            std::process::ExitCode::from(code)
        }
    }
}

/// The error and its causes, each said once: our typed errors already include their
/// cause in their message (`TLS: cert.pem: not a PEM certificate`), and `{:#}` would
/// repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
    }
    message
}
