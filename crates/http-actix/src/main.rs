//! `user-service`: serve the API (default) or apply migrations (`user-service migrate`).

use anyhow::Context;
use http_actix::config::Settings;
use http_actix::startup::Application;
use http_actix::telemetry;

const USAGE: &str = "usage: user-service [serve|migrate]\n\
    serve    run the HTTP API (default)\n\
    migrate  apply pending database migrations and exit\n\
    Configuration comes from environment variables and a .env file; see .env.example.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is normal; the environment alone may configure the service.
    let _ = dotenvy::dotenv();
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("-h" | "--help" | "help")) {
        println!("{USAGE}");
        return Ok(());
    }
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format, &settings.log_level);
    match command.as_deref() {
        None | Some("serve") => {
            let application = Application::build(settings).await.context("starting user-service")?;
            tracing::info!(port = application.port(), "user-service listening");
            application.run_until_stopped().await?;
        }
        Some("migrate") => {
            http_actix::store::Store::open(&settings.database, true).await?.close();
        }
        Some(other) => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}
