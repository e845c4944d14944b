//! `user-service`: serve the API (default), apply migrations (`user-service migrate`), show
//! and check the configuration (`user-service config [--check]`), or probe a running
//! instance's liveness (`user-service healthcheck`, the container image's `HEALTHCHECK`,
//! which has no shell or curl).
//!
//! Built with the `profiling` feature (`make bench` does; production builds do not), `serve`
//! also profiles itself when `PROFILE_FLAMEGRAPH=<path.svg>` is set: see [`profiling`].

use anyhow::Context;
use http_actix::config::Settings;
use http_actix::startup::Application;
use http_actix::telemetry;

/// mimalloc rather than glibc's malloc: per-thread free lists suit the short-lived allocations
/// of every request (see the README's performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: user-service [serve|migrate|config [--check]|healthcheck]\n\
    serve           run the HTTP API (default)\n\
    migrate         apply pending database migrations and exit\n\
    config          print the effective settings, secrets masked\n\
    config --check  validate the settings; exit 1 with start-up's message if invalid\n\
    healthcheck     exit 0 if the instance on $HOST:$PORT answers /health/live with 200, else 1\n\
    Configuration comes from environment variables and a .env file; see .env.example.";

fn main() -> anyhow::Result<()> {
    // A missing .env is normal; the environment alone may configure the service.
    let _ = dotenvy::dotenv();
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("-h" | "--help" | "help")) {
        println!("{USAGE}");
        return Ok(());
    }
    if command.as_deref() == Some("config") {
        return show_config(std::env::args().nth(2).as_deref());
    }
    if command.as_deref() == Some("healthcheck") {
        return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(healthcheck());
    }
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format, &settings.log_level);
    // HTTP requests run on actix's `WORKERS`, each a runtime of its own; this one runs the
    // background tasks. Few threads: with one per CPU (tokio's default) the near-cache's
    // barrier task hopped between threads beside the busy workers, and on two cores one
    // thread served cached reads with 4-8% less CPU (see the README's performance section).
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(settings.background_threads).enable_all().build()?;
    runtime.block_on(run(command.as_deref(), settings))
}

/// `serve` (the default) or `migrate`, on the configured settings.
async fn run(command: Option<&str>, settings: Settings) -> anyhow::Result<()> {
    match command {
        None | Some("serve") => {
            #[cfg(feature = "profiling")]
            let profile = profiling::start()?;
            let workers = settings.workers;
            let application = Application::build(settings).await.context("starting user-service")?;
            // The threads as the runtime has them, not as asked.
            let background_threads = tokio::runtime::Handle::current().metrics().num_workers();
            tracing::info!(port = application.port(), workers, background_threads, "user-service listening");
            let served = application.run_until_stopped().await;
            #[cfg(feature = "profiling")]
            let written = profiling::finish(profile);
            served?;
            #[cfg(feature = "profiling")]
            written?;
        }
        Some("migrate") => {
            http_actix::store::Store::open(&settings.database, true).await?.close();
        }
        Some(other) => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}

/// `user-service config [--check]`: the settings start-up would run with, or its error.
fn show_config(option: Option<&str>) -> anyhow::Result<()> {
    match option {
        None => print!("{}", http_actix::config::describe_env()?),
        Some("--check") => {
            Settings::from_env()?;
            println!("the configuration is valid");
        }
        Some(other) => anyhow::bail!("unknown option {other:?}\n{USAGE}"),
    }
    Ok(())
}

/// How long `user-service healthcheck` waits for the whole answer.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `user-service healthcheck`: one `GET /health/live` to the instance that `HOST` and `PORT`
/// (read as `serve` reads them, defaults 0.0.0.0 and 3001) describe, on loopback when it
/// listens on every address. Liveness only, as the image's `HEALTHCHECK` wants: a database
/// outage must not get the container restarted.
async fn healthcheck() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.trim().parse().with_context(|| format!("PORT={port:?} is not a port"))?,
        Err(_) => 3001,
    };
    let host = std::env::var("HOST").unwrap_or_default();
    let host = match host.trim() {
        "" | "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_owned(),
        other => other.to_owned(),
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let request = format!("GET /health/live HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // The status line is all that is read; it fits in the first bytes.
        let mut head = [0_u8; 16];
        let mut read = 0;
        while read < head.len() {
            match stream.read(&mut head[read..]).await? {
                0 => break,
                count => read += count,
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..read]).into_owned())
    };
    let status = tokio::time::timeout(HEALTHCHECK_TIMEOUT, probe)
        .await
        .with_context(|| format!("no answer from {host}:{port} within {HEALTHCHECK_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach {host}:{port}"))?;
    anyhow::ensure!(status.starts_with("HTTP/1.1 200"), "{host}:{port}/health/live answered {status:?}");
    Ok(())
}

/// A CPU profile of the whole `serve` run, for `make bench` (crates/bench/bench.py): with
/// `PROFILE_FLAMEGRAPH=<path.svg>` set, the process samples its own stacks (SIGPROF, 999 times
/// per second of CPU time, every thread) from start until it stops (SIGTERM, SIGINT), then
/// writes the flame graph there; with `PROFILE_FOLDED=<path>` too, the same samples as folded
/// stacks (`thread;outermost;…;innermost count` per line, the input of inferno and of the
/// bench's tables). Inlined functions are named, by their paths, when the binary carries
/// debug information (`CARGO_PROFILE_RELEASE_DEBUG=limited`, as the bench builds it).
#[cfg(feature = "profiling")]
mod profiling {
    use anyhow::Context;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    /// Samples per second of CPU time: not a multiple of the usual timer rates, so that
    /// sampling does not beat with periodic work.
    const FREQUENCY: i32 = 999;

    /// The running profiler and where its outputs go.
    pub(crate) struct Profile {
        guard: pprof::ProfilerGuard<'static>,
        flamegraph: PathBuf,
        folded: Option<PathBuf>,
    }

    fn path_from_env(name: &str) -> Option<PathBuf> {
        std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from)
    }

    /// Starts sampling when `PROFILE_FLAMEGRAPH` is set.
    pub(crate) fn start() -> anyhow::Result<Option<Profile>> {
        let Some(flamegraph) = path_from_env("PROFILE_FLAMEGRAPH") else { return Ok(None) };
        // No blocklist: pprof advises skipping the samples taken in libc, libgcc and pthread,
        // which would drop the system calls, malloc and memcpy, a large part of a cached GET.
        // What the blocklist avoids is a deadlock when a sample lands while the process is
        // itself taking a backtrace (a panic, errors captured with RUST_BACKTRACE), which a
        // profiled bench instance does not do.
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            .build()
            .context("starting the CPU profiler (PROFILE_FLAMEGRAPH)")?;
        Ok(Some(Profile { guard, flamegraph, folded: path_from_env("PROFILE_FOLDED") }))
    }

    /// Stops sampling and writes the flame graph (and the folded stacks).
    pub(crate) fn finish(profile: Option<Profile>) -> anyhow::Result<()> {
        let Some(Profile { guard, flamegraph, folded }) = profile else { return Ok(()) };
        let report = guard.report().build().context("resolving the profile's symbols")?;
        drop(guard);
        // One line per distinct stack, outermost frame first; a frame's inlined functions come
        // after the function they were inlined into. `;` separates frames: none in a name.
        let mut lines: Vec<String> = report
            .data
            .iter()
            .map(|(stack, count)| {
                let names = stack.frames.iter().rev().flat_map(|frame| {
                    let mut names: Vec<_> = frame.iter().rev().map(|symbol| symbol.name().replace(';', ":")).collect();
                    names.dedup(); // an address named both by the debug information and the symbol table
                    names
                });
                let thread = stack.thread_name_or_id().replace(';', ":");
                format!("{} {count}", std::iter::once(thread).chain(names).collect::<Vec<_>>().join(";"))
            })
            .collect();
        lines.sort_unstable();
        let samples: isize = report.data.values().sum();
        let mut options = pprof::flamegraph::Options::default();
        let name = flamegraph.file_stem().unwrap_or_default().to_string_lossy();
        options.title = format!("user-service CPU, {name}: {samples} samples at {FREQUENCY} Hz");
        if lines.is_empty() {
            tracing::warn!(flamegraph = %flamegraph.display(), "no CPU sample taken: no flame graph written");
            return Ok(());
        }
        let mut svg = std::io::BufWriter::new(create(&flamegraph)?);
        pprof::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(svg.flush()?))
            .with_context(|| format!("writing the flame graph to {}", flamegraph.display()))?;
        if let Some(folded) = &folded {
            let mut out = std::io::BufWriter::new(create(folded)?);
            lines
                .iter()
                .try_for_each(|line| writeln!(out, "{line}"))
                .and_then(|()| out.flush())
                .with_context(|| format!("writing the folded stacks to {}", folded.display()))?;
        }
        tracing::info!(samples, flamegraph = %flamegraph.display(), "CPU profile written");
        Ok(())
    }

    fn create(path: &Path) -> anyhow::Result<std::fs::File> {
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
    }
}
