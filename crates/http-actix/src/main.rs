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
    let mut settings = Settings::from_env()?;
    telemetry::init(settings.log_format, &settings.log_level);
    match command.as_deref() {
        None | Some("serve") => {
            let application = Application::build(settings).await.context("starting user-service")?;
            tracing::info!(port = application.port(), "user-service listening");
            application.run_until_stopped().await?;
        }
        Some("migrate") => {
            settings.database.migrate_on_startup = true;
            let pool = adapters_postgres::pool::build(&adapters_postgres::PoolSettings::new(settings.database.url))?;
            let applied = adapters_postgres::migrations::run_pending(&pool)
                .await
                .map_err(|error| anyhow::anyhow!("running migrations failed: {error}"))?;
            tracing::info!(applied, "database migrations up to date");
        }
        Some(other) => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}
