//! The JSON shapes of store records that the admin API serves and `vprov … --json`
//! prints (one definition, so the two never drift), and the RFC 3339 time formats
//! both use. Records only: no credentials ever appear here.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{AlertRecord, AuditRecord, DeviceRecord};

/// A store time stamp (Unix milliseconds) as RFC 3339 UTC with exactly three
/// fractional digits, as the API and JSON output carry it: fixed width, so the
/// strings sort as the times do (`…:01.100Z` before `…:01.120Z`; the well-known
/// RFC 3339 form drops trailing zeros and would sort `…:01.1Z` after `…:01.12Z`).
pub fn time_ms(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// A store time stamp as RFC 3339 UTC to the second, as tables show it (the number
/// itself if it is out of range).
pub fn time_s(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A device as the API shows it (no credentials).
pub fn device_json(d: &DeviceRecord) -> Value {
    json!({
        "uuid": d.uuid,
        "host_name": d.host_name,
        "address": d.address,
        "amt_version": d.amt_version,
        "state": d.state,
        "management_mode": d.management_mode,
        "agent_profile": d.agent_profile,
        "ssh_host_key": d.ssh_host_key,
        "provisioned_pid": d.provisioned_pid,
        "provisioned_at": time_ms(d.provisioned_at),
        "last_contact_at": d.last_contact_at.map(time_ms),
        "reachable": d.reachable,
        "control_mode": d.control_mode,
        "provisioning_path": d.provisioning_path,
        "pki_chain": d.pki_chain,
    })
}

pub fn alert_json(a: &AlertRecord) -> Value {
    json!({
        "id": a.id,
        "at": time_ms(a.at),
        "last_seen": time_ms(a.last_seen),
        "count": a.count,
        "severity": a.severity,
        "source": a.source,
        "message": a.message,
        "pid": a.pid,
        "device_uuid": a.device_uuid,
        "address": a.address,
        "acknowledged_at": a.acknowledged_at.map(time_ms),
        "acknowledged_by": a.acknowledged_by,
    })
}

pub fn audit_json(e: &AuditRecord) -> Value {
    json!({
        "id": e.id,
        "at": time_ms(e.at),
        "actor": e.actor,
        "action": e.action,
        "detail": e.detail,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_times_have_fixed_width_and_sort_as_the_times_do() {
        let times = [
            1_765_000_000_000,
            1_765_000_000_100,
            1_765_000_000_120,
            1_765_000_001_000,
        ];
        let shown: Vec<String> = times.iter().map(|&t| super::time_ms(t)).collect();
        assert_eq!(shown[0], "2025-12-06T05:46:40.000Z");
        assert!(shown.iter().all(|s| s.len() == shown[0].len()), "{shown:?}");
        assert!(shown.windows(2).all(|w| w[0] < w[1]), "{shown:?}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(super::time_s(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time_s(1_764_000_000_999), "2025-11-24T16:00:00Z");
        assert_eq!(
            super::time_ms(1_764_000_000_999),
            "2025-11-24T16:00:00.999Z"
        );
    }
}
