use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use otpd::config::{Cli, Command, LogFormat, TelegramCommand};
use otpd::logs::LogSink;
use otpd::{App, Deps};
use tracing_subscriber::EnvFilter;

// glibc's allocator took ~15 % of the request threads' time under load (profiled in
// BENCHMARKS.md); every request allocates its headers, body and answer.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line that names the variable, not clap's whole usage block.
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or("invalid configuration");
            eprintln!("otpd: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let mut sink = match LogSink::stderr() {
        Ok(sink) => sink,
        Err(e) => {
            eprintln!("otpd: cannot start the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink.writer());
    let ansi = std::io::stderr().is_terminal();
    match cli.config.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.with_ansi(ansi).init(),
    }
    if !ansi {
        otpd::logs::write_access_lines_to(&sink, cli.config.log_format == LogFormat::Json);
    }

    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Health => health(&cli.config).await,
        Command::Telegram { command } => telegram(&command, &cli.config).await,
    };
    // Every line logged is out before the last word (or the exit).
    sink.stop();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("otpd: {message}");
            ExitCode::from(code)
        }
    }
}

/// How a command failed: the exit code, and the one line said on stderr.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl std::fmt::Display) -> Result<(), Failure> {
    Err(Failure {
        code,
        message: message.to_string(),
    })
}

/// GET /health on this host's listener; the certificate is not checked (it names the
/// public host, not 127.0.0.1) since only liveness is asked.
async fn health(config: &otpd::config::Config) -> Result<(), Failure> {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if config.tls_files().is_some() {
        "https"
    } else {
        "http"
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .danger_accept_invalid_certs(true)
        .build();
    let answer = match client {
        Ok(client) => client.get(format!("{scheme}://{addr}/health")).send().await,
        Err(e) => return fail(1, e),
    };
    match answer {
        Ok(res) if res.status().is_success() => Ok(()),
        Ok(res) => fail(1, format!("/health answered {}", res.status())),
        Err(e) => fail(1, format!("/health did not answer: {}", e.without_url())),
    }
}

async fn telegram(command: &TelegramCommand, config: &otpd::config::Config) -> Result<(), Failure> {
    match otpd::bot::cli::run(command, config).await {
        Ok(done) => {
            println!("{done}");
            Ok(())
        }
        Err(e) => fail(1, e),
    }
}

async fn serve(config: otpd::config::Config) -> Result<(), Failure> {
    let app = match App::start(config, Deps::default()).await {
        Ok(app) => app,
        Err(e) => return fail(2, e),
    };
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests and deliveries");
    app.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
