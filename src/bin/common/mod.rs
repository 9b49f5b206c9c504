//! What the load and measurement binaries share.

use anyhow::Context;

/// The command line as `--flag value` pairs, in order; a flag without a value is an error.
pub fn flag_values() -> anyhow::Result<Vec<(String, String)>> {
    let mut args = std::env::args().skip(1);
    let mut pairs = Vec::new();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} takes a value"))?;
        pairs.push((flag, value));
    }
    Ok(pairs)
}
