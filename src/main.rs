use wallet::configuration::Settings;
use wallet::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    wallet::telemetry::init(&settings.log_format);
    let application = Application::build(settings).await?;
    application.run_until_stopped().await
}
