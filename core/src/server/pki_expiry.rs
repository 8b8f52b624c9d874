//! Warns before a provisioning chain expires: every 12 hours, each chain expiring
//! within `[pki] expiry_warning_days` (or already expired) is a warning alert. The
//! check is done by whichever node takes the store's `pki_expiry` turn (due every 12
//! hours; at the first start on a store at once), so several nodes on one store warn
//! once. The text is the same every day but for its numbers, so the repeats of one
//! chain aggregate into one alert with a count.

use std::time::Duration;

use tokio::sync::watch;

use crate::alerts::AlertLog;
use crate::store::{ChainRecord, NewAlert, Severity};
use crate::store_thread::StoreHandle;

/// How often chains are checked.
const INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// How often a node asks whether the check is due.
const TURN_POLL: Duration = Duration::from_secs(60);

/// The alerts for `chains` at `now` (Unix seconds), warning `warn_days` ahead.
pub fn expiry_alerts(chains: &[ChainRecord], now: i64, warn_days: u32) -> Vec<NewAlert> {
    let horizon = now + i64::from(warn_days) * 86_400;
    chains
        .iter()
        .filter(|c| c.not_after <= horizon)
        .map(|c| {
            let date = time::OffsetDateTime::from_unix_timestamp(c.not_after)
                .map(|t| t.date().to_string())
                .unwrap_or_else(|_| c.not_after.to_string());
            let message = if c.not_after < now {
                format!(
                    "provisioning chain {} (CN {}) expired on {date}: PKI devices cannot be configured with it; import its renewal (vprov pki import)",
                    c.name, c.common_name
                )
            } else {
                format!(
                    "provisioning chain {} (CN {}) expires on {date}, in {} days: import its renewal (vprov pki import)",
                    c.name,
                    c.common_name,
                    (c.not_after - now) / 86_400
                )
            };
            NewAlert {
                severity: Severity::Warning,
                source: "pki".into(),
                message,
                pid: None,
                device_uuid: None,
                address: None,
            }
        })
        .collect()
}

/// Checks the chains until `stop`.
pub async fn run(
    store: StoreHandle,
    alerts: AlertLog,
    warn_days: u32,
    node: std::sync::Arc<str>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let n = node.clone();
        let turn = store
            .call(move |s| s.take_turn("pki_expiry", &n, INTERVAL))
            .await;
        if matches!(turn, Ok(Ok(true))) {
            if let Ok(Ok(chains)) = store.call(|s| s.provisioning_chains()).await {
                let now = crate::store::now_ms() / 1000;
                for alert in expiry_alerts(&chains, now, warn_days) {
                    alerts.raise(alert);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TURN_POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::RootHashes;

    fn chain(name: &str, not_after: i64) -> ChainRecord {
        ChainRecord {
            name: name.into(),
            common_name: "prov.example.com".into(),
            domain: "example.com".into(),
            chain_pem: String::new(),
            root: RootHashes::of_der(b"r"),
            not_after,
            imported_at: 0,
            imported_by: "t".into(),
        }
    }

    #[test]
    fn chains_near_or_past_expiry_are_warned_about() {
        let now = 1_800_000_000;
        let day = 86_400;
        let chains = [
            chain("fine", now + 90 * day),
            chain("soon", now + 10 * day + 5),
            chain("gone", now - day),
        ];
        let alerts = expiry_alerts(&chains, now, 30);
        assert_eq!(alerts.len(), 2);
        assert!(alerts[0].message.contains("soon") && alerts[0].message.contains("in 10 days"));
        assert!(alerts[1].message.contains("gone") && alerts[1].message.contains("expired on"));
        assert!(alerts.iter().all(|a| a.severity == Severity::Warning));
        assert!(expiry_alerts(&chains, now, 0).len() == 1);
    }
}
