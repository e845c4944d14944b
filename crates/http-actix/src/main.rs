//! `user-service`: serve the API (default), apply migrations (`user-service migrate`), or
//! show and check the configuration (`user-service config [--check]`).

use anyhow::Context;
use http_actix::config::Settings;
use http_actix::startup::Application;
use http_actix::telemetry;

const USAGE: &str = "usage: user-service [serve|migrate|config [--check]]\n\
    serve           run the HTTP API (default)\n\
    migrate         apply pending database migrations and exit\n\
    config          print the effective settings, secrets masked\n\
    config --check  validate the settings; exit 1 with start-up's message if invalid\n\
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
    if command.as_deref() == Some("config") {
        return show_config(std::env::args().nth(2).as_deref());
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
