//! Choosing the provisioning chain for a v3 hello.
//!
//! A hello carries the device's trusted root hashes but no DNS suffix, host name or
//! address other than the connection's source (`docs/protocol-notes.md`), so
//! vprov learns the device's DNS suffix from, in this order:
//!
//! 1. the most specific `[pki] subnets` rule containing the source address
//!    (`"10.1.0.0/16 = corp.example.com"`): the admin's explicit word wins;
//! 2. with `[pki] reverse_dns = true`, the name the system resolver gives the address
//!    (`getnameinfo`: /etc/hosts, then DNS PTR), less its first label
//!    (`pc1.corp.example.com` → `corp.example.com`): a per-device fact, more specific
//!    than a site-wide default, but PTR records are often kept by others (DHCP
//!    updates) and may be stale, so an explicit rule overrides it; a name of one
//!    label, no answer or no answer within [`REVERSE_DNS_TIMEOUT`] falls through;
//! 3. `[pki] default_domain`.
//!
//! A chain fits when its root's hash (any of SHA-1,
//! SHA-256, SHA-384) is among the hello's and its leaf CN lies in the suffix: equal to
//! it or ending in `.` + suffix, compared without case — the label-aligned reading of
//! "the domain suffix matches the FQDN suffix in the certificate" (IRG-RCFG 3e; the
//! DMT-DOCS example CN `test.example.com` for suffix `example.com`). Among fitting
//! chains the one valid longest wins.

use std::net::IpAddr;
use std::time::Duration;

use super::ChainRecord;
use crate::hello::CertificateHash;

/// An address range and the DNS suffix of the devices in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRule {
    pub network: IpAddr,
    pub prefix: u8,
    pub domain: String,
}

impl SubnetRule {
    /// Parses `10.1.0.0/16 = corp.example.com`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (net, domain) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected \"ADDRESS/PREFIX = DOMAIN\""))?;
        let (addr, prefix) = net
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: the network needs a /PREFIX"))?;
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?}: the prefix must be 0-{max}"))?;
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        check_domain(&domain).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(SubnetRule {
            network,
            prefix,
            domain,
        })
    }

    fn contains(&self, addr: IpAddr) -> bool {
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v4) => u32::from(v4) as u128,
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        let width = if self.network.is_ipv4() { 32 } else { 128 };
        if self.network.is_ipv4() != addr.is_ipv4() {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        let mask = if shift >= 128 {
            0
        } else {
            (u128::MAX << shift) & (u128::MAX >> (128 - width))
        };
        bits(self.network) & mask == bits(addr) & mask
    }
}

/// Checks a DNS suffix: at least two labels of letters, digits and `-`.
pub fn check_domain(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if labels.len() >= 2 && labels.iter().all(label_ok) && domain.len() <= 223 {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a DNS suffix (two or more labels of letters, digits and '-')",
            crate::text::escape_control(domain)
        ))
    }
}

/// Where the device's DNS suffix comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainRules {
    pub default_domain: Option<String>,
    pub subnets: Vec<SubnetRule>,
    /// Whether the source address's name (reverse DNS) gives the suffix where no
    /// subnet rule does.
    pub reverse_dns: bool,
}

/// The DNS suffix assumed for a device, and what said so (for alerts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDomain {
    pub domain: String,
    pub source: String,
}

impl DomainRules {
    fn subnet_domain(&self, addr: IpAddr) -> Option<&str> {
        self.subnets
            .iter()
            .filter(|r| r.contains(addr))
            .max_by_key(|r| r.prefix)
            .map(|r| r.domain.as_str())
    }

    /// Whether the name of `addr` is needed: reverse DNS is on and no subnet rule
    /// covers the address.
    pub fn wants_reverse_dns(&self, addr: IpAddr) -> bool {
        self.reverse_dns && self.subnet_domain(addr).is_none()
    }

    /// The DNS suffix vprov assumes for a device at `addr` whose reverse DNS name
    /// (looked up when [`Self::wants_reverse_dns`]) is `name`.
    pub fn domain_for(&self, addr: IpAddr, name: Option<&str>) -> Option<DeviceDomain> {
        let found = |domain: &str, source: String| DeviceDomain {
            domain: domain.to_string(),
            source,
        };
        if let Some(d) = self.subnet_domain(addr) {
            return Some(found(d, format!("the [pki] subnets rule for {addr}")));
        }
        let reverse = name
            .filter(|_| self.reverse_dns)
            .and_then(|n| suffix_of_name(n).map(|d| (n, d)));
        if let Some((n, d)) = reverse {
            return Some(found(&d, format!("the reverse DNS name {n} of {addr}")));
        }
        self.default_domain
            .as_deref()
            .map(|d| found(d, format!("[pki] default_domain, for {addr}")))
    }
}

/// The DNS suffix of a host name: the name less its first label, if that is a DNS
/// suffix ([`check_domain`]).
pub fn suffix_of_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let (_, suffix) = name.split_once('.')?;
    check_domain(suffix).ok()?;
    Some(suffix.to_string())
}

/// How long a reverse DNS look-up may take before the job goes on without it.
pub const REVERSE_DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// The name the system resolver (`getnameinfo` with `NI_NAMEREQD`: /etc/hosts, then
/// DNS) gives `addr`, if any within `timeout`. The look-up blocks, so it runs on a blocking thread
/// (which finishes on its own if the wait ends first).
pub async fn reverse_name(addr: IpAddr, timeout: Duration) -> Option<String> {
    let lookup = tokio::task::spawn_blocking(move || dns_lookup::lookup_addr(&addr));
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(Ok(name))) => Some(name),
        _ => None,
    }
}

/// Whether a chain whose leaf CN is `common_name` fits a device DNS suffix.
pub fn fits_domain(common_name: &str, suffix: &str) -> bool {
    let cn = common_name.to_ascii_lowercase();
    let suffix = suffix.to_ascii_lowercase();
    cn == suffix || cn.ends_with(&format!(".{suffix}"))
}

/// Why no chain was chosen (each becomes an alert).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no configured provisioning chain has a root the device trusts; the device trusts {}", .hashes.join(", "))]
    NoHashMatch { hashes: Vec<String> },
    #[error("no DNS suffix is configured for the device's address {address}: set [pki] default_domain or a [pki] subnets rule (or turn on [pki] reverse_dns)")]
    NoDomain { address: IpAddr },
    #[error("the chains the device trusts ({}) do not fit its DNS suffix {} (from {}); the leaf CN must be in that domain", .chains.join(", "), .domain.domain, .domain.source)]
    DomainMismatch {
        domain: DeviceDomain,
        chains: Vec<String>,
    },
}

/// Picks the chain for a hello from `address` (whose reverse DNS name is `name`, if
/// looked up) with root `hashes`.
pub fn select<'a>(
    chains: &'a [ChainRecord],
    hashes: &[CertificateHash],
    address: IpAddr,
    name: Option<&str>,
    rules: &DomainRules,
) -> Result<&'a ChainRecord, SelectError> {
    let trusted: Vec<&ChainRecord> = chains
        .iter()
        .filter(|c| hashes.iter().any(|h| c.root.matches(h)))
        .collect();
    if trusted.is_empty() {
        return Err(SelectError::NoHashMatch {
            hashes: hashes.iter().map(super::roots::describe).collect(),
        });
    }
    let domain = rules
        .domain_for(address, name)
        .ok_or(SelectError::NoDomain { address })?;
    trusted
        .iter()
        .filter(|c| fits_domain(&c.common_name, &domain.domain))
        .max_by_key(|c| c.not_after)
        .copied()
        .ok_or_else(|| SelectError::DomainMismatch {
            domain,
            chains: trusted
                .iter()
                .map(|c| format!("{} (CN {})", c.name, c.common_name))
                .collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hello::HashAlgorithm;
    use crate::pki::RootHashes;

    fn chain(name: &str, cn: &str, root: &[u8], not_after: i64) -> ChainRecord {
        ChainRecord {
            name: name.into(),
            common_name: cn.into(),
            domain: String::new(),
            chain_pem: String::new(),
            root: RootHashes::of_der(root),
            not_after,
            imported_at: 0,
            imported_by: "t".into(),
        }
    }

    fn entry(algorithm: HashAlgorithm, root: &[u8]) -> CertificateHash {
        let h = RootHashes::of_der(root);
        let hash = match algorithm {
            HashAlgorithm::Sha1 => h.sha1,
            HashAlgorithm::Sha256 => h.sha256,
            HashAlgorithm::Sha384 => h.sha384,
        };
        CertificateHash { algorithm, hash }
    }

    #[test]
    fn subnet_rules_parse_and_the_most_specific_wins() {
        let rules = DomainRules {
            default_domain: Some("example.com".into()),
            subnets: vec![
                SubnetRule::parse("10.0.0.0/8 = corp.example.com").unwrap(),
                SubnetRule::parse("10.1.0.0/16=Lab.Example.com.").unwrap(),
                SubnetRule::parse("fd00::/8 = v6.example.com").unwrap(),
            ],
            reverse_dns: false,
        };
        let at = |s: &str| rules.domain_for(s.parse().unwrap(), None).map(|d| d.domain);
        assert_eq!(at("10.1.2.3").as_deref(), Some("lab.example.com"));
        assert_eq!(at("10.2.2.3").as_deref(), Some("corp.example.com"));
        assert_eq!(at("192.168.1.1").as_deref(), Some("example.com"));
        assert_eq!(at("fd12::1").as_deref(), Some("v6.example.com"));
        assert!(SubnetRule::parse("10.0.0.0 = x.com").is_err());
        assert!(SubnetRule::parse("10.0.0.0/33 = x.com").is_err());
        assert!(SubnetRule::parse("10.0.0.0/8 = localhost").is_err());
        assert!(SubnetRule::parse("0.0.0.0/0 = all.example.com")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(
            DomainRules::default().domain_for("10.0.0.1".parse().unwrap(), None),
            None
        );
    }

    #[test]
    fn reverse_dns_comes_after_subnet_rules_and_before_the_default() {
        let mut rules = DomainRules {
            default_domain: Some("example.com".into()),
            subnets: vec![SubnetRule::parse("10.1.0.0/16 = lab.example.com").unwrap()],
            reverse_dns: true,
        };
        let (ruled, other) = ("10.1.0.9".parse().unwrap(), "10.2.0.9".parse().unwrap());
        assert!(!rules.wants_reverse_dns(ruled));
        assert!(rules.wants_reverse_dns(other));
        let at = |r: &DomainRules, a, n| r.domain_for(a, n).unwrap();
        let named = at(&rules, other, Some("PC1.Corp.Example.com."));
        assert_eq!(named.domain, "corp.example.com");
        assert!(
            named
                .source
                .contains("reverse DNS name PC1.Corp.Example.com."),
            "{named:?}"
        );
        // A subnet rule wins over the name; a name of one label, or none, falls
        // through to the default.
        assert_eq!(
            at(&rules, ruled, Some("pc1.corp.example.com")).domain,
            "lab.example.com"
        );
        assert_eq!(at(&rules, other, Some("localhost")).domain, "example.com");
        assert_eq!(at(&rules, other, Some("pc1.com")).domain, "example.com");
        assert_eq!(at(&rules, other, None).domain, "example.com");
        rules.reverse_dns = false;
        assert!(!rules.wants_reverse_dns(other));
        assert_eq!(
            at(&rules, other, Some("pc1.corp.example.com")).domain,
            "example.com"
        );
    }

    #[tokio::test]
    async fn the_system_resolver_names_the_loopback_address_from_etc_hosts() {
        // /etc/hosts names 127.0.0.1 `localhost` (no DNS involved); one label is no
        // DNS suffix.
        let name = reverse_name("127.0.0.1".parse().unwrap(), REVERSE_DNS_TIMEOUT).await;
        assert_eq!(name.as_deref(), Some("localhost"));
        assert_eq!(suffix_of_name("localhost"), None);
    }

    #[test]
    fn the_domain_rule_is_label_aligned() {
        assert!(fits_domain("prov.example.com", "example.com"));
        assert!(fits_domain("Prov.Example.com", "example.COM"));
        assert!(fits_domain("example.com", "example.com"));
        assert!(fits_domain("*.example.com", "example.com"));
        assert!(!fits_domain("prov.badexample.com", "example.com"));
        assert!(!fits_domain("prov.example.com", "corp.example.com"));
    }

    #[test]
    fn chains_are_picked_by_any_hash_algorithm_and_domain() {
        let rules = DomainRules {
            default_domain: Some("example.com".into()),
            subnets: vec![SubnetRule::parse("10.9.0.0/16 = other.org").unwrap()],
            reverse_dns: false,
        };
        let chains = [
            chain("old", "prov.example.com", b"root-a", 100),
            chain("new", "prov.example.com", b"root-a", 200),
            chain("org", "prov.other.org", b"root-b", 300),
        ];
        let addr = "10.0.0.5".parse().unwrap();
        for alg in [
            HashAlgorithm::Sha1,
            HashAlgorithm::Sha256,
            HashAlgorithm::Sha384,
        ] {
            let got = select(&chains, &[entry(alg, b"root-a")], addr, None, &rules).unwrap();
            assert_eq!(got.name, "new");
        }
        let hashes = [
            entry(HashAlgorithm::Sha256, b"root-a"),
            entry(HashAlgorithm::Sha256, b"root-b"),
        ];
        assert_eq!(
            select(&chains, &hashes, "10.9.1.1".parse().unwrap(), None, &rules)
                .unwrap()
                .name,
            "org"
        );
        let err = select(
            &chains,
            &[entry(HashAlgorithm::Sha256, b"root-b")],
            addr,
            None,
            &rules,
        )
        .unwrap_err();
        assert!(matches!(err, SelectError::DomainMismatch { .. }), "{err}");
        assert!(err.to_string().contains("org (CN prov.other.org)"), "{err}");
        let err = select(
            &chains,
            &[entry(HashAlgorithm::Sha256, b"root-c")],
            addr,
            None,
            &rules,
        )
        .unwrap_err();
        assert!(matches!(err, SelectError::NoHashMatch { ref hashes } if hashes.len() == 1));
        let err = select(&chains, &hashes, addr, None, &DomainRules::default()).unwrap_err();
        assert_eq!(err, SelectError::NoDomain { address: addr });
    }
}
