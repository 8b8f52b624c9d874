//! Secrets typed by the operator: a line from standard input (`--stdin`) or a prompt
//! without echo, asked twice. Both stay in zeroized memory and are never printed. A
//! password with leading or trailing whitespace is refused: that is almost always a
//! copy-and-paste accident, and a password kept with a stray space fails later, far
//! from the cause.

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
    let secret = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
    check_surrounding_whitespace(&secret)?;
    Ok(secret)
}

/// Refuses a secret that starts or ends with whitespace (never naming the secret).
fn check_surrounding_whitespace(secret: &str) -> anyhow::Result<()> {
    if secret.trim() != secret {
        bail!(
            "the password starts or ends with whitespace (a space, tab or the like), almost \
             always a copy-and-paste accident; nothing was changed: give it without"
        );
    }
    Ok(())
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
    check_surrounding_whitespace(&first)?;
    check(&first)?;
    let second =
        Zeroizing::new(rpassword::prompt_password("Repeat it: ").context("reading password")?);
    if first != second {
        bail!("the two entries differ; nothing was changed");
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_surrounding_whitespace_is_refused() {
        for bad in ["Zq9 x7K ", " Zq9x7K", "Zq9x7K\t", "\u{a0}Zq9x7K"] {
            let err = super::check_surrounding_whitespace(bad).unwrap_err();
            assert!(!err.to_string().contains("Zq9"), "{err}");
        }
        super::check_surrounding_whitespace("Zq9 x7K").unwrap();
    }
}
