//! A real OpenSSH server for the agent deployment tests: `/usr/sbin/sshd` (installed
//! by `scripts/install-deps.sh`) on one loopback address, with its own host key, one
//! authorized client key and an SFTP subsystem, logging in as the user running the
//! tests. Stopped when dropped.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd.
pub struct SshServer {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddrV4,
    /// The user tests log in as (the one running them).
    pub user: String,
    /// An authorized private key (mode 0600) and one the server does not accept.
    pub client_key: PathBuf,
    pub stranger_key: PathBuf,
}

/// Runs `ssh-keygen` to make an unencrypted ed25519 key at `path`.
fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vprov-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen (openssh-client; scripts/install-deps.sh installs it)");
    assert!(status.success(), "ssh-keygen failed");
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl SshServer {
    /// Starts sshd on a free port of `ip`.
    pub fn start(ip: Ipv4Addr) -> SshServer {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: run scripts/install-deps.sh (it installs openssh-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client_key = dir.path().join("client_key");
        let stranger_key = dir.path().join("stranger_key");
        keygen(&client_key);
        keygen(&stranger_key);
        keygen(&dir.path().join("host_key"));
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o600)).unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("sshd_config"),
            format!(
                "ListenAddress {ip}:{port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n\
                 LogLevel VERBOSE\n"
            ),
        )
        .unwrap();
        let child = Self::spawn(dir.path());
        let server = SshServer {
            child,
            addr: SocketAddrV4::new(ip, port),
            user: current_user(),
            client_key,
            stranger_key,
            dir,
        };
        server.wait_listening();
        server
    }

    fn spawn(dir: &Path) -> Child {
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting sshd")
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "sshd did not start on {}: {}",
                    self.addr,
                    std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host key in OpenSSH form (`ssh-ed25519 AAAA… comment`).
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_key.pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The host key's fingerprint, as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fn host_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(self.dir.path().join("host_key.pub"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(1).unwrap().to_string()
    }

    /// A known_hosts line for this server (`[ip]:port key`).
    pub fn known_hosts_line(&self) -> String {
        let mut key = self.host_public_key();
        if let Some(cut) = key.rfind(' ').filter(|_| key.matches(' ').count() > 1) {
            key.truncate(cut);
        }
        format!("[{}]:{} {key}", self.addr.ip(), self.addr.port())
    }

    /// Restarts on the same address with a new host key (a reinstalled host, or an
    /// impostor).
    pub fn restart_with_new_host_key(&mut self) {
        self.stop();
        keygen(&self.dir.path().join("host_key"));
        self.child = Self::spawn(self.dir.path());
        self.wait_listening();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The listening socket closes with the process.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.stop();
    }
}
