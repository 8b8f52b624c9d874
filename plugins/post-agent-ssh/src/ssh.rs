//! One deployment over SSH (russh): connect, verify the device's host key, log in,
//! copy the package over SFTP, run the install command and read its exit status.
//! Every error names its [`Step`]; only transport failures (connect, handshake) are
//! tried again. Secrets (password, enrollment token) never reach a log or an error:
//! the command's output is quoted in errors with the token masked.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{Handle, Handler};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use russh_sftp::client::SftpSession;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use vprov_sdk::{Host, HostKeyVerdict};
use zeroize::Zeroizing;

use crate::{Credential, HostKeyPolicy, Profile};

/// The steps of a deployment, as errors name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    HostKey,
    Authenticate,
    CopyPackage,
    Install,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::HostKey => "host key",
            Step::Authenticate => "authenticate",
            Step::CopyPackage => "copy package",
            Step::Install => "install",
        })
    }
}

/// Why a deployment failed: the step and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployError {
    pub step: Step,
    pub message: String,
    /// Whether another attempt may succeed (transport failures).
    retryable: bool,
}

impl fmt::Display for DeployError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} failed: {}", self.step, self.message)
    }
}

fn fail(step: Step, message: impl Into<String>) -> DeployError {
    DeployError {
        step,
        message: message.into(),
        retryable: false,
    }
}

fn transient(step: Step, message: impl Into<String>) -> DeployError {
    DeployError {
        retryable: true,
        ..fail(step, message)
    }
}

/// Where the deployment goes.
pub struct Target<'a> {
    /// The device's address (its operating system shares it with AMT).
    pub address: &'a str,
    pub device_uuid: &'a str,
    pub host: &'a Host,
}

/// What a successful deployment did.
#[derive(Debug)]
pub struct Report {
    pub bytes_copied: u64,
}

/// Deploys `profile` to `target`, running `command` (placeholders expanded). `token`
/// is masked wherever the command's output is quoted.
pub fn deploy(
    target: &Target<'_>,
    profile: &Profile,
    command: &str,
    token: &str,
) -> Result<Report, DeployError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(Step::Connect, format!("cannot start the SSH runtime: {e}")))?;
    let mut attempt = 1;
    loop {
        match runtime.block_on(deploy_once(target, profile, command, token)) {
            Ok(report) => return Ok(report),
            Err(e) if e.retryable && attempt < profile.attempts => {
                target.host.warn(&format!(
                    "agent deployment to device {}: attempt {attempt} of {} failed ({e}); trying again in {} ms",
                    target.device_uuid,
                    profile.attempts,
                    profile.retry_delay.as_millis()
                ));
                std::thread::sleep(profile.retry_delay);
                attempt += 1;
            }
            Err(mut e) => {
                if e.retryable && attempt > 1 {
                    e.message = format!("{} (after {attempt} attempts)", e.message);
                }
                return Err(e);
            }
        }
    }
}

async fn deploy_once(
    target: &Target<'_>,
    profile: &Profile,
    command: &str,
    token: &str,
) -> Result<Report, DeployError> {
    let ip: IpAddr = target.address.parse().map_err(|_| {
        fail(
            Step::Connect,
            format!("device address {:?} is not an IP address", target.address),
        )
    })?;
    let addr = SocketAddr::new(ip, profile.port);
    let ms = |d: Duration| d.as_millis();
    let stream = timeout(
        profile.connect_timeout,
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| {
        transient(
            Step::Connect,
            format!(
                "{addr} did not answer within {} ms",
                ms(profile.connect_timeout)
            ),
        )
    })?
    .map_err(|e| transient(Step::Connect, format!("cannot connect to {addr}: {e}")))?;

    let rejection = Arc::new(Mutex::new(None));
    let verifier = HostKeyVerifier {
        policy: profile.host_key_policy.clone(),
        addr,
        device_uuid: target.device_uuid.to_string(),
        host: target.host.clone(),
        rejection: rejection.clone(),
    };
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: Some(profile.command_timeout + profile.connect_timeout),
        ..Default::default()
    });
    let handshake = timeout(
        profile.connect_timeout,
        russh::client::connect_stream(config, stream, verifier),
    )
    .await;
    let mut session = match handshake {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            if let Some(reason) = rejection.lock().expect("rejection lock").take() {
                return Err(fail(Step::HostKey, reason));
            }
            return Err(transient(
                Step::Connect,
                format!("SSH handshake with {addr} failed: {e}"),
            ));
        }
        Err(_) => {
            return Err(transient(
                Step::Connect,
                format!(
                    "SSH handshake with {addr} did not finish within {} ms",
                    ms(profile.connect_timeout)
                ),
            ))
        }
    };

    timeout(profile.connect_timeout, authenticate(&mut session, profile))
        .await
        .map_err(|_| {
            fail(
                Step::Authenticate,
                format!("no answer within {} ms", ms(profile.connect_timeout)),
            )
        })??;
    let bytes_copied = timeout(profile.command_timeout, copy_package(&session, profile))
        .await
        .map_err(|_| {
            fail(
                Step::CopyPackage,
                format!(
                    "copying {} did not finish within {} ms",
                    profile.package.display(),
                    ms(profile.command_timeout)
                ),
            )
        })??;
    let (status, output) = timeout(profile.command_timeout, run_command(&session, command))
        .await
        .map_err(|_| {
            fail(
                Step::Install,
                format!(
                    "the install command did not finish within {} ms",
                    ms(profile.command_timeout)
                ),
            )
        })??;
    let _ = session
        .disconnect(Disconnect::ByApplication, "deployment finished", "en")
        .await;
    if status != 0 {
        return Err(fail(
            Step::Install,
            format!(
                "the install command exited with status {status}{}",
                quote_output(&output, token)
            ),
        ));
    }
    Ok(Report { bytes_copied })
}

/// Checks the device's host key under the profile's policy during the handshake,
/// before any credential is sent. A refusal's reason is left in `rejection`.
struct HostKeyVerifier {
    policy: HostKeyPolicy,
    addr: SocketAddr,
    device_uuid: String,
    host: Host,
    rejection: Arc<Mutex<Option<String>>>,
}

impl HostKeyVerifier {
    fn verify(&self, key: &PublicKeyOrCertificate) -> Result<(), String> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => return Err(
                "the device presented an SSH host certificate; only plain host keys are supported"
                    .into(),
            ),
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let addr = self.addr;
        match &self.policy {
            HostKeyPolicy::TrustOnFirstUse => {
                let text = key
                    .to_openssh()
                    .map_err(|e| format!("cannot encode the device's host key: {e}"))?;
                let check = self
                    .host
                    .check_host_key(&self.device_uuid, &text)
                    .map_err(|e| format!("cannot check the host key with vprov's store: {e}"))?;
                match check.verdict {
                    HostKeyVerdict::FIRST_USE => {
                        self.host.info(&format!(
                            "device {}: SSH host key {fingerprint} recorded (trust on first use)",
                            self.device_uuid
                        ));
                        Ok(())
                    }
                    HostKeyVerdict::MATCHES => Ok(()),
                    HostKeyVerdict::CHANGED => Err(format!(
                        "{addr} presented SSH host key {fingerprint}, but {} is recorded for this device: it may be an impostor, so nothing was sent; if its operating system was reinstalled, run `vprov devices forget-host-key {}`",
                        check.recorded_fingerprint, self.device_uuid
                    )),
                    other => Err(format!("unknown host key verdict {}", other.0)),
                }
            }
            HostKeyPolicy::KnownHosts(file) => {
                let host = addr.ip().to_string();
                match russh::keys::check_known_hosts_path(&host, addr.port(), key, file) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "{addr} presented SSH host key {fingerprint}, which {} does not list for it; nothing was sent",
                        file.display()
                    )),
                    Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                        "{addr} presented SSH host key {fingerprint}, which differs from line {line} of {}: it may be an impostor, so nothing was sent",
                        file.display()
                    )),
                    Err(e) => Err(format!("cannot read {}: {e}", file.display())),
                }
            }
        }
    }
}

impl Handler for HostKeyVerifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.verify(key) {
            Ok(()) => Ok(true),
            Err(reason) => {
                *self.rejection.lock().expect("rejection lock") = Some(reason);
                Ok(false)
            }
        }
    }
}

async fn authenticate(
    session: &mut Handle<HostKeyVerifier>,
    profile: &Profile,
) -> Result<(), DeployError> {
    let step = |m: String| fail(Step::Authenticate, m);
    let user = profile.user.as_str();
    let (result, how) = match &profile.credential {
        Credential::IdentityFile(path) => {
            let key = russh::keys::load_secret_key(path, None).map_err(|e| {
                step(format!(
                    "cannot load the identity file {}: {e} (an unencrypted OpenSSH private key is needed)",
                    path.display()
                ))
            })?;
            let hash = session
                .best_supported_rsa_hash()
                .await
                .map_err(|e| step(e.to_string()))?
                .flatten();
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            (
                session.authenticate_publickey(user, key).await,
                "public key",
            )
        }
        Credential::PasswordFile(path) => {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                step(format!(
                    "cannot read the password file {}: {e}",
                    path.display()
                ))
            })?);
            let password = text.lines().next().unwrap_or_default();
            (
                session.authenticate_password(user, password).await,
                "password",
            )
        }
    };
    match result.map_err(|e| step(e.to_string()))? {
        russh::client::AuthResult::Success => Ok(()),
        russh::client::AuthResult::Failure { .. } => Err(step(format!(
            "the device refused {how} authentication as {user}"
        ))),
    }
}

async fn copy_package(
    session: &Handle<HostKeyVerifier>,
    profile: &Profile,
) -> Result<u64, DeployError> {
    let step = |m: String| fail(Step::CopyPackage, m);
    let remote = profile.remote_path.as_str();
    let channel = session
        .channel_open_session()
        .await
        .map_err(|e| step(format!("cannot open an SSH session: {e}")))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| step(format!("the device offers no SFTP: {e}")))?;
    let sftp = SftpSession::new(channel.into_stream())
        .await
        .map_err(|e| step(format!("SFTP: {e}")))?;
    let mut local = tokio::fs::File::open(&profile.package)
        .await
        .map_err(|e| step(format!("cannot read {}: {e}", profile.package.display())))?;
    let mut file = sftp
        .create(remote)
        .await
        .map_err(|e| step(format!("cannot create {remote} on the device: {e}")))?;
    let copied = tokio::io::copy(&mut local, &mut file)
        .await
        .map_err(|e| step(format!("writing {remote}: {e}")))?;
    file.shutdown()
        .await
        .map_err(|e| step(format!("closing {remote}: {e}")))?;
    drop(file);
    let size = sftp
        .metadata(remote)
        .await
        .map_err(|e| step(format!("cannot read back {remote}: {e}")))?
        .size;
    let _ = sftp.close().await;
    if size != Some(copied) {
        return Err(step(format!(
            "{remote} holds {} bytes after copying {copied}",
            size.map_or("an unknown number of".to_string(), |s| s.to_string())
        )));
    }
    Ok(copied)
}

/// Output kept for an error message: the last bytes of stdout and stderr.
const OUTPUT_KEPT: usize = 4096;

async fn run_command(
    session: &Handle<HostKeyVerifier>,
    command: &str,
) -> Result<(u32, Vec<u8>), DeployError> {
    let step = |m: String| fail(Step::Install, m);
    let mut channel = session
        .channel_open_session()
        .await
        .map_err(|e| step(format!("cannot open an SSH session: {e}")))?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| step(format!("cannot start the install command: {e}")))?;
    let mut output = Vec::new();
    let mut status = None;
    let mut signal = None;
    while let Some(message) = channel.wait().await {
        match message {
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                output.extend_from_slice(&data);
                if output.len() > OUTPUT_KEPT {
                    output.drain(..output.len() - OUTPUT_KEPT);
                }
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(signal_name),
            _ => {}
        }
    }
    match (status, signal) {
        (Some(status), _) => Ok((status, output)),
        (None, Some(signal)) => Err(step(format!(
            "the install command was killed by signal {signal:?}"
        ))),
        (None, None) => Err(step(
            "the install command ended without an exit status".to_string(),
        )),
    }
}

/// `: <last line of output>` with the token masked, or nothing without output.
fn quote_output(output: &[u8], token: &str) -> String {
    let text = String::from_utf8_lossy(output);
    let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return String::new();
    };
    let mut last = last.trim().to_string();
    if !token.is_empty() {
        last = last.replace(token, "<enroll token>");
    }
    if last.chars().count() > 200 {
        last = last.chars().take(200).collect::<String>() + "…";
    }
    format!(": {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_step() {
        let e = fail(Step::CopyPackage, "disk full");
        assert_eq!(e.to_string(), "step copy package failed: disk full");
        assert!(!e.retryable);
        assert!(transient(Step::Connect, "refused").retryable);
    }

    #[test]
    fn quoted_output_is_the_last_line_with_the_token_masked() {
        let out = b"installing\nenrolling with tok123 failed: denied\n\n";
        assert_eq!(
            quote_output(out, "tok123"),
            ": enrolling with <enroll token> failed: denied"
        );
        assert_eq!(quote_output(b"", "tok123"), "");
        assert_eq!(quote_output(&[b'x'; 300], "").chars().count(), 2 + 201);
    }
}
