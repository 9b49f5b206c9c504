use wallet::configuration::Settings;
use wallet::startup::Application;

/// mimalloc instead of the system allocator: a debit allocates and frees many small
/// buffers (JSON, SQL arguments, Redis replies) across threads, where the system
/// allocator spent measurably more CPU per debit.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    wallet::telemetry::init(&settings.log_format);
    let application = Application::build(settings).await?;
    application.run_until_stopped().await
}
