//! `vprov pki`: provisioning certificate chains for PKI (hello v3) remote configuration
//! — import (PEM chain + key, or PFX with its password on standard input), list, show
//! and remove. Import refuses, with the reason, a chain AMT firmware would refuse.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Subcommand};
use vprov_core::pki::chain::subjects_of_pem;
use vprov_core::pki::ProvisioningChain;
use vprov_core::store::ChainRecord;
use zeroize::Zeroizing;

use super::output::{self, outln, ListFormat};
use super::{actor, input, Context};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Import a provisioning certificate chain and its key
    ///
    /// The chain (leaf, up to two intermediates, the root) must pass the checks AMT
    /// firmware applies: leaf with serverAuth and the Intel setup OID or OU, no
    /// SHA-1, RSA of at least 2048 bits, at most 4 certificates, all valid now, the key
    /// belonging to the leaf. The key is sealed in the store.
    #[command(group(ArgGroup::new("input").required(true).args(["pem", "pfx"])))]
    Import {
        /// Name of the chain in vprov (letters, digits, '.', '-', '_')
        name: String,
        /// PEM file with the certificates (any order) and, unless --key, the key
        #[arg(long, value_name = "FILE")]
        pem: Option<PathBuf>,
        /// PEM file with the leaf's private key
        #[arg(long, value_name = "FILE", requires = "pem")]
        key: Option<PathBuf>,
        /// PKCS#12 (.pfx/.p12) file with certificate, chain and key
        #[arg(long, value_name = "FILE")]
        pfx: Option<PathBuf>,
        /// Read the PFX (or encrypted key) password from the first line of standard input
        #[arg(long)]
        stdin: bool,
    },
    /// List the chains: domain, expiry, root hash
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Show one chain: certificates and the root's SHA-1, SHA-256 and SHA-384 hashes
    Show {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Remove a chain and its key
    Remove { name: String },
    /// Create vprov's own provisioning root and leaf for a DNS suffix (no commercial
    /// certificate needed: devices are made to trust the root with `vprov pki setupbin`)
    CreateRoot {
        /// Name of the chain in vprov
        name: String,
        /// The devices' DNS suffix (their PKI DNS suffix); the leaf is
        /// provisioning.<DOMAIN>
        #[arg(long)]
        domain: String,
    },
    /// Write a USB setup.bin that makes a device trust a chain's root
    ///
    /// One record (version 3): the MEBx password (factory `admin` → the provisioning
    /// password), the root's SHA-256 (2.8), the chain's domain as PKI DNS suffix (2.3),
    /// vprov's address and hello port (2.17, 2.18) and 2.28 = 1. The file holds the
    /// provisioning password: it is written with mode 0600.
    Setupbin {
        name: String,
        /// Where to write it (the root of a FAT USB key, named setup.bin)
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// vprov's IPv4 address as devices reach it [default: [export] server_address]
        #[arg(long)]
        server: Option<std::net::Ipv4Addr>,
        /// vprov's hello port [default: [export] server_port, else the hello listener's]
        #[arg(long)]
        port: Option<u16>,
        /// Replace an existing file
        #[arg(long)]
        force: bool,
    },
}

fn now_seconds() -> i64 {
    vprov_core::store::now_ms() / 1000
}

/// The password for a PFX or an encrypted PEM key: `--stdin`, else a prompt.
fn password(stdin: bool, needed: bool) -> anyhow::Result<Zeroizing<String>> {
    if stdin {
        return input::secret_line("the password");
    }
    if !needed {
        return Ok(Zeroizing::new(String::new()));
    }
    if !io::stdin().is_terminal() {
        bail!("no terminal to prompt on: pass the password on standard input with --stdin");
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password("Password: ").context("reading password")?,
    ))
}

fn read(path: &PathBuf) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    ))
}

fn to_json(c: &ChainRecord) -> serde_json::Value {
    serde_json::json!({
        "name": c.name,
        "common_name": c.common_name,
        "domain": c.domain,
        "not_after": output::time(c.not_after * 1000),
        "root_sha1": hex::encode(&c.root.sha1),
        "root_sha256": hex::encode(&c.root.sha256),
        "root_sha384": hex::encode(&c.root.sha384),
        "certificates": subjects_of_pem(&c.chain_pem),
        "imported_at": output::time(c.imported_at),
        "imported_by": c.imported_by,
    })
}

pub fn run(cmd: PkiCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        PkiCommand::Import {
            name,
            pem,
            key,
            pfx,
            stdin,
        } => import(ctx, &name, pem, key, pfx, stdin)?,
        PkiCommand::List { format } => list(ctx, format)?,
        PkiCommand::Show { name, format } => show(ctx, &name, format)?,
        PkiCommand::CreateRoot { name, domain } => create_root(ctx, &name, &domain)?,
        PkiCommand::Setupbin {
            name,
            output: out,
            server,
            port,
            force,
        } => setupbin(ctx, &name, &out, server, port, force)?,
        PkiCommand::Remove { name } => remove(ctx, &name)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `vprov pki import`: checks the chain as AMT firmware would, then seals it in the
/// store.
fn import(
    ctx: &Context,
    name: &str,
    pem: Option<PathBuf>,
    key: Option<PathBuf>,
    pfx: Option<PathBuf>,
    stdin: bool,
) -> anyhow::Result<()> {
    vprov_core::store::check_chain_name(name)?;
    let chain = match (pem, pfx) {
        (Some(pem), None) => {
            let certs = read(&pem)?;
            let key_pem = key.as_ref().map(read).transpose()?;
            let key_text = key_pem.as_deref().unwrap_or(&certs);
            let encrypted = String::from_utf8_lossy(key_text).contains("ENCRYPTED");
            let pass = password(stdin, encrypted)?;
            ProvisioningChain::from_pem(
                &certs,
                key_pem.as_deref().map(|k| k.as_slice()),
                pass.as_bytes(),
                now_seconds(),
            )
        }
        (None, Some(pfx)) => {
            let der = read(&pfx)?;
            let pass = password(stdin, true)?;
            ProvisioningChain::from_pfx(&der, &pass, now_seconds())
        }
        _ => bail!("give either --pem or --pfx"),
    }
    .context("the chain was refused; nothing was imported")?;
    let rec = ctx
        .store()?
        .add_provisioning_chain(name, &chain, &actor())?;
    outln!(
        "imported chain {} (CN {}, domain {}, {} certificates, expires {}); root SHA-256 {}",
        rec.name,
        rec.common_name,
        rec.domain,
        chain.certificates().len(),
        output::time(rec.not_after * 1000),
        hex::encode(&rec.root.sha256)
    )?;
    Ok(())
}

/// `vprov pki list`.
fn list(ctx: &Context, format: ListFormat) -> anyhow::Result<()> {
    let chains = ctx.store()?.provisioning_chains()?;
    match format {
        ListFormat::Json => output::json(&serde_json::Value::Array(
            chains.iter().map(to_json).collect(),
        ))?,
        ListFormat::Table => output::table(
            &["NAME", "DOMAIN", "COMMON NAME", "EXPIRES", "ROOT SHA-256"],
            &chains
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.domain.clone(),
                        c.common_name.clone(),
                        output::time(c.not_after * 1000),
                        hex::encode(&c.root.sha256),
                    ]
                })
                .collect::<Vec<_>>(),
        )?,
    }
    Ok(())
}

/// `vprov pki show`.
fn show(ctx: &Context, name: &str, format: ListFormat) -> anyhow::Result<()> {
    let c = ctx
        .store()?
        .provisioning_chain(name)?
        .with_context(|| format!("no chain named {name} (see `vprov pki list`)"))?;
    match format {
        ListFormat::Json => output::json(&to_json(&c))?,
        ListFormat::Table => {
            outln!("name:         {}", c.name)?;
            outln!("common name:  {}", c.common_name)?;
            outln!("domain:       {}", c.domain)?;
            outln!("expires:      {}", output::time(c.not_after * 1000))?;
            for (i, s) in subjects_of_pem(&c.chain_pem).iter().enumerate() {
                outln!("certificate {}: {s}", i + 1)?;
            }
            outln!("root SHA-1:   {}", hex::encode(&c.root.sha1))?;
            outln!("root SHA-256: {}", hex::encode(&c.root.sha256))?;
            outln!("root SHA-384: {}", hex::encode(&c.root.sha384))?;
            outln!(
                "imported:     {} by {}",
                output::time(c.imported_at),
                c.imported_by
            )?;
        }
    }
    Ok(())
}

/// `vprov pki create-root`: vprov's own root and leaf for a DNS suffix.
fn create_root(ctx: &Context, name: &str, domain: &str) -> anyhow::Result<()> {
    vprov_core::store::check_chain_name(name)?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    vprov_core::pki::select::check_domain(&domain).map_err(anyhow::Error::msg)?;
    let chain = vprov_core::pki::own_root::create(&domain, now_seconds())?;
    let rec = ctx
        .store()?
        .add_provisioning_chain(name, &chain, &actor())?;
    outln!(
        "created chain {} (leaf CN {}, expires {}); root SHA-256 {}\n\
         write the setup.bin that makes devices trust it: vprov pki setupbin {} --output setup.bin",
        rec.name,
        rec.common_name,
        output::time(rec.not_after * 1000),
        hex::encode(&rec.root.sha256),
        rec.name
    )?;
    Ok(())
}

/// `vprov pki setupbin`: a USB setup.bin (mode 0600: it holds the provisioning
/// password) that makes devices trust a chain's root; audited (`pki.setupbin`).
fn setupbin(
    ctx: &Context,
    name: &str,
    out: &Path,
    server: Option<std::net::Ipv4Addr>,
    port: Option<u16>,
    force: bool,
) -> anyhow::Result<()> {
    let export = &ctx.config.export;
    let server = match server {
        Some(s) => s,
        None => export.server_address.parse().map_err(|_| {
            anyhow::anyhow!(
                "give vprov's IPv4 address with --server (or set [export] server_address)"
            )
        })?,
    };
    let port = port
        .or(export.server_port)
        .unwrap_or(ctx.config.hello.listen.port());
    let (chain, bytes) = ctx
        .store()?
        .provisioning_setup_bin(name, server, port, &actor())?
        .with_context(|| format!("no chain named {name} (see `vprov pki list`)"))?;
    let mut file = output::PrivateFile::create(out, force)
        .with_context(|| format!("writing {}", out.display()))?;
    io::Write::write_all(&mut file, &bytes)?;
    file.commit()
        .with_context(|| format!("writing {}", out.display()))?;
    outln!(
        "wrote {}: devices it touches trust chain {} (root SHA-256 {}), PKI DNS suffix {}, hellos to {server}:{port}",
        out.display(),
        chain.name,
        hex::encode(&chain.root.sha256),
        chain.domain
    )?;
    Ok(())
}

/// `vprov pki remove`.
fn remove(ctx: &Context, name: &str) -> anyhow::Result<()> {
    if !ctx.store()?.remove_provisioning_chain(name, &actor())? {
        bail!("no chain named {name} (see `vprov pki list`)");
    }
    outln!("removed chain {name}")?;
    Ok(())
}
