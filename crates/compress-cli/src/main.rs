//! The `compress` binary; see `compress --help`.

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`compress inspect --layers | head`) like other Unix tools,
    // instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = compress_cli::cli::Cli::parse();
    if let Err(e) = compress_cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
