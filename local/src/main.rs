//! `pushdeploy-local`: runs pushdeploy locally.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
