//! Setup-mode hellos (§1): the 32-byte little-endian v2 (PSK) hello and the retry
//! schedule of 15 hellos (5 × 1 min, 5 × 10 min, 5 × 1 h, scaled), each sent on its
//! own TCP connection from the device's address in a single write.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

/// Length of a v2 hello.
pub const HELLO_LEN: usize = 32;
/// Highest retry count (IRG: 0–14).
pub const MAX_RETRY: u32 = 14;
/// How long one hello connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The v2 hello: admin-credentials-set 1, version 2, retry count, raw UUID, PID.
pub fn encode(retry: u32, uuid: &[u8; 16], pid: &[u8; 8]) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[0..2].copy_from_slice(&1u16.to_le_bytes());
    out[2..4].copy_from_slice(&2u16.to_le_bytes());
    out[4..8].copy_from_slice(&retry.to_le_bytes());
    out[8..24].copy_from_slice(uuid);
    out[24..32].copy_from_slice(pid);
    out
}

/// Real-time wait after the hello with this retry count (before the next one).
pub fn interval_after(retry: u32) -> Duration {
    match retry {
        0..=4 => Duration::from_secs(60),
        5..=9 => Duration::from_secs(600),
        _ => Duration::from_secs(3600),
    }
}

/// `interval` multiplied by `scale` (non-finite or negative results give zero).
pub fn scaled(interval: Duration, scale: f64) -> Duration {
    Duration::try_from_secs_f64(interval.as_secs_f64() * scale).unwrap_or(Duration::ZERO)
}

/// Sends one hello from `from` (any port) to `server`: connect, one write, close.
pub async fn send(from: Ipv4Addr, server: SocketAddr, hello: &[u8]) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.write_all(hello).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_synthetic_hello() {
        let uuid = [
            0x4b, 0x52, 0x9b, 0x93, 0xd4, 0x13, 0x18, 0x1d, 0xe4, 0x87, 0x1c, 0x69, 0x7a, 0x6b,
            0x7a, 0x2b,
        ];
        let hex: String = encode(0, &uuid, b"0000037M")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "01000200000000004b529b93d413181de4871c697a6b7a2b303030303033374d"
        );
    }

    #[test]
    fn schedule_is_three_bursts_of_five() {
        let total: u64 = (0..MAX_RETRY).map(|r| interval_after(r).as_secs()).sum();
        assert_eq!(total, 5 * 60 + 5 * 600 + 4 * 3600);
        assert_eq!(
            scaled(Duration::from_secs(60), 0.001),
            Duration::from_millis(60)
        );
        assert_eq!(scaled(Duration::from_secs(60), f64::NAN), Duration::ZERO);
    }
}
