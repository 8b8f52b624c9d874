//! Secrets typed by the operator: a line from standard input (`--stdin`) or a prompt
//! without echo, asked twice. Both stay in zeroized memory and are never printed.

use std::io::{self, BufRead, IsTerminal};

use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

/// The first line of standard input, without its line ending.
pub fn secret_line(what: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("reading {what} from standard input"))?;
    Ok(Zeroizing::new(
        line.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

/// Prompts for a secret twice without echo. `check` runs on the first entry, so a
/// secret breaking the rules is refused before it is repeated.
pub fn secret_twice(
    label: &str,
    check: impl FnOnce(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Zeroizing<String>> {
    if !io::stdin().is_terminal() {
        bail!("no terminal to prompt on: pass the password on standard input with --stdin");
    }
    let first = Zeroizing::new(rpassword::prompt_password(label).context("reading password")?);
    check(&first)?;
    let second =
        Zeroizing::new(rpassword::prompt_password("Repeat it: ").context("reading password")?);
    if first != second {
        bail!("the two entries differ; nothing was changed");
    }
    Ok(first)
}
