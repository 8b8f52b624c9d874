//! `vprov admin …`: the admin API's accounts and bearer tokens, and `vprov ca export`:
//! vprov's CA certificate for browsers and scripts that talk to the API.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use vprov_core::accounts;
use vprov_core::store::{CredentialKind, Role};

use super::choices::RoleChoice;

use super::output::{self, outln, ListFormat};
use super::{actor, input, Context};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an account for the admin API and web console
    ///
    /// The password (at least 12 characters) is prompted twice without echo, or read
    /// from the first line of standard input with --stdin; only a salted argon2id
    /// hash is stored.
    Add {
        /// Account name (letters, digits, '.', '-', '_', '@')
        name: String,
        /// admin: everything; operator: no PPS or credential reveals, no provisioning
        /// password change
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleChoice,
        /// Read the password from the first line of standard input instead of prompting
        /// (leading or trailing whitespace is refused as a copy-and-paste accident)
        #[arg(long)]
        stdin: bool,
    },
    /// List accounts
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Remove an account with its sessions and tokens
    Remove {
        /// Account name
        name: String,
    },
    /// Issue a bearer token for scripts (`Authorization: Bearer …`)
    ///
    /// Printed once; only its hash is stored. It acts with the account's role until
    /// the account is removed. The audit log records it as issued by you (cli:USER).
    Token {
        /// Account name
        name: String,
        /// What the token is for (shown in the audit log)
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print vprov's CA certificate (PEM)
    ///
    /// It signs the devices' TLS certificates and, by default, the admin API's: install
    /// it as a trusted authority in the browsers that use the console. The CA is
    /// created by the first `vprov serve`.
    Export,
}

pub fn admin(cmd: AdminCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        AdminCommand::Add { name, role, stdin } => {
            let role = Role::from(role);
            accounts::check_name(&name)?;
            let password = if stdin {
                input::secret_line("the password")?
            } else {
                input::secret_twice("Password: ", |p| {
                    accounts::check_password(p).map_err(Into::into)
                })?
            };
            let hash = accounts::hash_password(&password)?;
            ctx.store()?.add_admin(&name, &hash, role, &actor())?;
            outln!("admin account {name} added (role {})", role.as_str())?;
        }
        AdminCommand::List { format } => {
            let admins = ctx.store()?.admins()?;
            match format {
                ListFormat::Json => output::json(&serde_json::json!(admins
                    .iter()
                    .map(|a| serde_json::json!({
                        "name": a.name,
                        "role": a.role,
                        "created_at": output::time(a.created_at),
                        "tokens": a.tokens,
                    }))
                    .collect::<Vec<_>>()))?,
                ListFormat::Table => output::table(
                    &["NAME", "ROLE", "CREATED", "TOKENS"],
                    &admins
                        .iter()
                        .map(|a| {
                            vec![
                                a.name.clone(),
                                a.role.as_str().to_string(),
                                output::time(a.created_at),
                                a.tokens.to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )?,
            }
        }
        AdminCommand::Remove { name } => {
            ctx.store()?.remove_admin(&name, &actor())?;
            outln!("admin account {name} removed, with its sessions and tokens")?;
        }
        AdminCommand::Token { name, comment } => {
            let mut store = ctx.store()?;
            if store.admin_password_hash(&name)?.is_none() {
                bail!("no admin account named {name}");
            }
            let token = accounts::new_token();
            store.add_credential(
                &accounts::token_hash(&token),
                &name,
                CredentialKind::Token,
                comment.as_deref(),
                None,
                &actor(),
            )?;
            let mut out = io::stdout().lock();
            writeln!(out, "{}", token.as_str())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ca(cmd: CaCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let CaCommand::Export = cmd;
    let der = ctx.store()?.ca_certificate()?.context(
        "the store has no certificate authority yet: it is created by the first `vprov serve`",
    )?;
    let pem = openssl::x509::X509::from_der(&der)
        .and_then(|c| c.to_pem())
        .context("encoding the CA certificate")?;
    io::stdout().write_all(&pem)?;
    Ok(ExitCode::SUCCESS)
}
