pub fn run(_: BenchArgs) -> anyhow::Result<()> {
    Ok(())
}
#[derive(clap::Args)]
pub struct BenchArgs {}
