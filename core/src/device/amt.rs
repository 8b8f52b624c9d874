//! The typed AMT calls vprov makes over a session (`amt-protocol.md` §4.3).
//!
//! Owns the class names, method names and parameters of each call, the sequence
//! Enumerate → Pull … → items, and the extraction of typed results from replies
//! (realm, version, UUID, key pair handles, DER keys, certificate handles). Wire
//! encoding details follow Intel's go-wsman-messages and MeshCentral; see the notes on
//! each method.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};
use zeroize::Zeroizing;

use super::wsman::{self, amt_uri, cim_uri, Element, NS_TRANSFER};
use super::{AmtSession, DeviceError};

/// Most Pull round trips accepted for one enumeration (real classes need 1).
const MAX_PULLS: usize = 64;
/// The remote (network) TLS settings instance (§8).
const REMOTE_TLS_SETTINGS: &str = "Intel(r) AMT 802.3 TLS Settings";
/// The local (LMS, host OS) TLS settings instance (§8).
const LOCAL_TLS_SETTINGS: &str = "Intel(r) AMT LMS TLS Settings";
/// `ElementName` of the TLS protocol endpoint collection as vprov sends it: the form
/// MeshCentral and go-wsman-messages send to real devices.
const TLS_ENDPOINT_COLLECTION: &str = "TLSProtocolEndpointInstances Collection";
/// The same collection as Intel's real-device fixtures report it (with a space).
const TLS_ENDPOINT_COLLECTION_REPORTED: &str = "TLSProtocolEndpoint Instances Collection";
/// What firmware puts in its HTTP `Server` header before the version (MeshCentral
/// reads the version from it).
const SERVER_HEADER_PREFIX: &str = "Intel(R) Active Management Technology ";

const GENERAL_SETTINGS: &str = "AMT_GeneralSettings";
const SETUP_SERVICE: &str = "AMT_SetupAndConfigurationService";
const AUTHORIZATION_SERVICE: &str = "AMT_AuthorizationService";
const TIME_SERVICE: &str = "AMT_TimeSynchronizationService";
const KEY_SERVICE: &str = "AMT_PublicKeyManagementService";
const KEY_PAIR: &str = "AMT_PublicPrivateKeyPair";
const CERTIFICATE: &str = "AMT_PublicKeyCertificate";
const CREDENTIAL_CONTEXT: &str = "AMT_TLSCredentialContext";
const ENDPOINT_COLLECTION: &str = "AMT_TLSProtocolEndpointCollection";
const TLS_SETTING_DATA: &str = "AMT_TLSSettingData";
const SOFTWARE_IDENTITY: &str = "CIM_SoftwareIdentity";
const ASSOCIATED_POWER: &str = "CIM_AssociatedPowerManagementService";
const SERVICE_AVAILABLE: &str = "CIM_ServiceAvailableToElement";
const POWER_SERVICE: &str = "CIM_PowerManagementService";
const COMPUTER_SYSTEM: &str = "CIM_ComputerSystem";
const BIOS: &str = "CIM_BIOSElement";
const PROCESSOR: &str = "CIM_Processor";
const MEMORY: &str = "CIM_PhysicalMemory";
const ETHERNET: &str = "AMT_EthernetPortSettings";

/// What `vprov devices inventory` reads from a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    /// AMT firmware version (`CIM_SoftwareIdentity` `AMT`).
    pub amt_version: String,
    /// Every firmware component's version, by `InstanceID`.
    pub firmware: Vec<(String, String)>,
    pub bios: Bios,
    pub processors: Vec<Processor>,
    pub memory: Vec<Memory>,
    pub network: Vec<NetworkPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bios {
    pub manufacturer: Option<String>,
    pub version: Option<String>,
    pub release_date: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Processor {
    pub name: Option<String>,
    pub max_clock_mhz: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub capacity_bytes: Option<u64>,
    pub speed_mhz: Option<u32>,
    pub manufacturer: Option<String>,
    pub part_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkPort {
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub dhcp: Option<bool>,
}

fn text(e: &Element, name: &str) -> Option<String> {
    e.property(name)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn number<T: std::str::FromStr>(e: &Element, name: &str) -> Option<T> {
    e.property(name).and_then(|v| v.parse().ok())
}

/// What vprov needs from `AMT_GeneralSettings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralSettings {
    /// The Digest realm, `Digest:` + 32 hex digits.
    pub digest_realm: String,
    pub host_name: String,
    pub domain_name: String,
}

impl GeneralSettings {
    fn from_instance(instance: &Element) -> Result<Self, DeviceError> {
        let realm = instance
            .property("DigestRealm")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                DeviceError::Malformed("AMT_GeneralSettings without DigestRealm".into())
            })?;
        Ok(GeneralSettings {
            digest_realm: realm.to_string(),
            host_name: instance
                .property("HostName")
                .unwrap_or_default()
                .to_string(),
            domain_name: instance
                .property("DomainName")
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// `DigestPassword` of `SetAdminAclEntryEx`: base64 of the raw 16-byte
/// MD5(`user:realm:password`) (§8; GWM, rpc-go — not the hex form).
pub(crate) fn digest_password(user: &str, realm: &str, password: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(user.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    BASE64.encode(md5.finalize())
}

/// The `VersionString` of the `CIM_SoftwareIdentity` instance whose InstanceID is `AMT`.
fn amt_version_of(items: &[Element]) -> Result<String, DeviceError> {
    items
        .iter()
        .find(|i| i.property("InstanceID") == Some("AMT"))
        .and_then(|i| i.property("VersionString"))
        .map(str::to_string)
        .ok_or_else(|| DeviceError::Malformed("no AMT CIM_SoftwareIdentity version".into()))
}

/// `X.Y.Z` from `Intel(R) Active Management Technology X.Y.Z`.
fn version_from_server_header(server: &str) -> Option<String> {
    let version = server.trim().strip_prefix(SERVER_HEADER_PREFIX)?.trim();
    let valid = !version.is_empty()
        && version.len() <= 32
        && version.chars().all(|c| c.is_ascii_digit() || c == '.');
    valid.then(|| version.to_string())
}

fn power_state_of(items: &[Element]) -> Option<u16> {
    items
        .iter()
        .find_map(|i| i.property("PowerState").and_then(|p| p.parse().ok()))
}

/// Decodes base64 that may be wrapped over several lines.
fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>, DeviceError> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    BASE64
        .decode(compact)
        .map_err(|_| DeviceError::Malformed(format!("{what} is not base64")))
}

/// The DER public key (PKCS#1 RSAPublicKey) of key pair `instance_id`.
fn public_key_of(items: &[Element], instance_id: &str) -> Result<Vec<u8>, DeviceError> {
    let item = items
        .iter()
        .find(|i| i.property("InstanceID") == Some(instance_id))
        .ok_or_else(|| DeviceError::Malformed(format!("key pair {instance_id:?} not listed")))?;
    let der = item
        .property("DERKey")
        .ok_or_else(|| DeviceError::Malformed("key pair without DERKey".into()))?;
    decode_base64(der, "DERKey")
}

/// The `InstanceID` selector of the endpoint reference `output/<name>`.
fn epr_instance_id(output: &Element, name: &str) -> Result<String, DeviceError> {
    output
        .child(name)
        .and_then(|epr| epr.selector("InstanceID"))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| DeviceError::Malformed(format!("reply without {name} InstanceID")))
}

impl AmtSession {
    fn next_id(&mut self) -> u64 {
        let id = self.message_id;
        self.message_id += 1;
        id
    }

    /// Sends one envelope and returns the reply text. A SOAP fault on any status is
    /// [`DeviceError::Fault`]; other non-200 statuses are [`DeviceError::Http`].
    async fn send(&mut self, envelope: String, step: &'static str) -> Result<String, DeviceError> {
        let started = std::time::Instant::now();
        let reply = self.http.post_wsman(Bytes::from(envelope), step).await;
        crate::metrics::wsman_call(step, started.elapsed());
        let reply = reply?;
        let text = String::from_utf8(reply.body.to_vec())
            .map_err(|_| DeviceError::Malformed("reply is not UTF-8".into()));
        if reply.status != 200 {
            return Err(text
                .ok()
                .and_then(|t| wsman::fault_in(&t))
                .unwrap_or(DeviceError::Http(reply.status)));
        }
        text
    }

    async fn invoke(
        &mut self,
        class_uri: &str,
        method: &'static str,
        params: &[(&str, &str)],
    ) -> Result<Element, DeviceError> {
        let id = self.next_id();
        let xml = self
            .send(wsman::invoke_request(class_uri, method, id, params), method)
            .await?;
        wsman::parse_method_output(&xml, class_uri, method)
    }

    /// Enumerate + Pull until EndOfSequence; returns every item.
    async fn enumerate(
        &mut self,
        class_uri: &str,
        step: &'static str,
    ) -> Result<Vec<Element>, DeviceError> {
        let id = self.next_id();
        let xml = self
            .send(wsman::enumerate_request(class_uri, id), step)
            .await?;
        let mut context = wsman::parse_enumerate_response(&xml)?;
        let mut items = Vec::new();
        let mut kept = 0usize;
        for _ in 0..MAX_PULLS {
            let id = self.next_id();
            let xml = self
                .send(wsman::pull_request(class_uri, id, &context), step)
                .await?;
            let page = wsman::parse_pull_response(&xml)?;
            drop(xml);
            kept += page.items.iter().map(Element::element_count).sum::<usize>();
            if kept > wsman::MAX_ELEMENTS {
                return Err(DeviceError::Malformed(format!(
                    "enumeration returned more than {} XML elements",
                    wsman::MAX_ELEMENTS
                )));
            }
            items.extend(page.items);
            match page.next {
                Some(next) => context = next,
                None => return Ok(items),
            }
        }
        Err(DeviceError::Malformed(format!(
            "enumeration did not end after {MAX_PULLS} pulls"
        )))
    }

    async fn put(
        &mut self,
        class_uri: &str,
        selectors: &[(&str, &str)],
        instance: &Element,
        step: &'static str,
    ) -> Result<(), DeviceError> {
        let id = self.next_id();
        let xml = self
            .send(wsman::put_request(class_uri, id, selectors, instance), step)
            .await?;
        wsman::reply_body(&xml).map(drop)
    }

    async fn general_settings_instance(&mut self) -> Result<Element, DeviceError> {
        let uri = amt_uri(GENERAL_SETTINGS);
        self.enumerate(&uri, "AMT_GeneralSettings enumerate")
            .await?
            .into_iter()
            .find(|i| i.ns == uri && i.name == GENERAL_SETTINGS)
            .ok_or_else(|| DeviceError::Malformed("no AMT_GeneralSettings instance".into()))
    }

    /// Enumerate+Pull `AMT_GeneralSettings`: Digest realm, host and domain name.
    pub async fn general_settings(&mut self) -> Result<GeneralSettings, DeviceError> {
        GeneralSettings::from_instance(&self.general_settings_instance().await?)
    }

    /// Re-reads `AMT_GeneralSettings` and Puts it back with `HostName` / `DomainName`
    /// changed (every other property as the device returned it).
    pub async fn set_host_name(&mut self, host: &str, domain: &str) -> Result<(), DeviceError> {
        let mut instance = self.general_settings_instance().await?;
        instance.set_property("HostName", host);
        instance.set_property("DomainName", domain);
        self.put(
            &amt_uri(GENERAL_SETTINGS),
            &[],
            &instance,
            "AMT_GeneralSettings put",
        )
        .await
    }

    /// The firmware version: `VersionString` of `CIM_SoftwareIdentity` `AMT`, or, when
    /// the device lists no such instance, the version in its HTTP `Server` header
    /// (`Intel(R) Active Management Technology X.Y.Z`, as MeshCentral reads it).
    pub async fn amt_version(&mut self) -> Result<String, DeviceError> {
        let items = self
            .enumerate(
                &cim_uri(SOFTWARE_IDENTITY),
                "CIM_SoftwareIdentity enumerate",
            )
            .await?;
        amt_version_of(&items).or_else(|e| {
            self.http
                .server_header()
                .and_then(version_from_server_header)
                .ok_or(e)
        })
    }

    /// The host's power state (CIM values: 2 on, 8 off, ...): `PowerState` of the
    /// `CIM_ServiceAvailableToElement` association, as go-wsman-messages, RPS and
    /// MeshCentral read it; devices that do not serve that class are asked for
    /// `CIM_AssociatedPowerManagementService`.
    pub async fn power_state(&mut self) -> Result<u16, DeviceError> {
        let items = match self
            .enumerate(
                &cim_uri(SERVICE_AVAILABLE),
                "CIM_ServiceAvailableToElement enumerate",
            )
            .await
        {
            Ok(items) if power_state_of(&items).is_some() => items,
            Ok(_) | Err(DeviceError::Fault { .. }) => {
                self.enumerate(
                    &cim_uri(ASSOCIATED_POWER),
                    "CIM_AssociatedPowerManagementService enumerate",
                )
                .await?
            }
            Err(e) => return Err(e),
        };
        power_state_of(&items)
            .ok_or_else(|| DeviceError::Malformed("no PowerState in the power service".into()))
    }

    /// `CIM_PowerManagementService.RequestPowerStateChange(PowerState, ManagedElement =
    /// the host's CIM_ComputerSystem)`.
    pub async fn request_power_state_change(&mut self, state: u16) -> Result<(), DeviceError> {
        let uri = cim_uri(POWER_SERVICE);
        let id = self.next_id();
        let state = state.to_string();
        let request = wsman::invoke_with_reference_request(
            &uri,
            "RequestPowerStateChange",
            id,
            &[
                ("CreationClassName", POWER_SERVICE),
                ("Name", "Intel(r) AMT Power Management Service"),
                ("SystemCreationClassName", COMPUTER_SYSTEM),
                ("SystemName", "Intel(r) AMT"),
            ],
            &[("PowerState", &state)],
            (
                "ManagedElement",
                &cim_uri(COMPUTER_SYSTEM),
                &[
                    ("CreationClassName", COMPUTER_SYSTEM),
                    ("Name", "ManagedSystem"),
                ],
            ),
        );
        let xml = self.send(request, "RequestPowerStateChange").await?;
        wsman::parse_method_output(&xml, &uri, "RequestPowerStateChange").map(drop)
    }

    /// Firmware, BIOS, processors, memory and network ports, one enumeration each.
    pub async fn inventory(&mut self) -> Result<Inventory, DeviceError> {
        let software = self
            .enumerate(
                &cim_uri(SOFTWARE_IDENTITY),
                "CIM_SoftwareIdentity enumerate",
            )
            .await?;
        let bios = self
            .enumerate(&cim_uri(BIOS), "CIM_BIOSElement enumerate")
            .await?;
        let processors = self
            .enumerate(&cim_uri(PROCESSOR), "CIM_Processor enumerate")
            .await?;
        let memory = self
            .enumerate(&cim_uri(MEMORY), "CIM_PhysicalMemory enumerate")
            .await?;
        let ports = self
            .enumerate(&amt_uri(ETHERNET), "AMT_EthernetPortSettings enumerate")
            .await?;
        let bios = bios.first();
        Ok(Inventory {
            amt_version: amt_version_of(&software)?,
            firmware: software
                .iter()
                .filter_map(|s| Some((text(s, "InstanceID")?, text(s, "VersionString")?)))
                .collect(),
            bios: Bios {
                manufacturer: bios.and_then(|b| text(b, "Manufacturer")),
                version: bios.and_then(|b| text(b, "Version")),
                // A CIM datetime: <ReleaseDate><Datetime>…</Datetime></ReleaseDate>.
                release_date: bios
                    .and_then(|b| b.child("ReleaseDate"))
                    .and_then(|d| d.children.first())
                    .map(|d| d.text.trim().to_string()),
            },
            processors: processors
                .iter()
                .map(|p| Processor {
                    name: text(p, "ElementName"),
                    max_clock_mhz: number(p, "MaxClockSpeed"),
                })
                .collect(),
            memory: memory
                .iter()
                .map(|m| Memory {
                    capacity_bytes: number(m, "Capacity"),
                    speed_mhz: number(m, "Speed"),
                    manufacturer: text(m, "Manufacturer"),
                    part_number: text(m, "PartNumber"),
                })
                .collect(),
            network: ports
                .iter()
                .map(|n| NetworkPort {
                    mac: text(n, "MACAddress"),
                    ip: text(n, "IPAddress"),
                    dhcp: text(n, "DHCPEnabled").map(|d| d == "true"),
                })
                .collect(),
        })
    }

    /// `GetUuid`: the 16 raw bytes as on the wire (no GUID byte swapping here).
    pub async fn get_uuid(&mut self) -> Result<[u8; 16], DeviceError> {
        let output = self.invoke(&amt_uri(SETUP_SERVICE), "GetUuid", &[]).await?;
        let text = output
            .property("UUID")
            .ok_or_else(|| DeviceError::Malformed("GetUuid without UUID".into()))?;
        decode_base64(text, "UUID")?
            .try_into()
            .map_err(|_| DeviceError::Malformed("UUID is not 16 bytes".into()))
    }

    /// `SetAdminAclEntryEx(Username, DigestPassword)`; afterwards the device expects
    /// `new_password` (call [`AmtSession::set_password`]).
    pub async fn set_admin_acl_entry_ex(
        &mut self,
        user: &str,
        realm: &str,
        new_password: &str,
    ) -> Result<(), DeviceError> {
        let digest = digest_password(user, realm, new_password);
        self.invoke(
            &amt_uri(AUTHORIZATION_SERVICE),
            "SetAdminAclEntryEx",
            &[("Username", user), ("DigestPassword", &digest)],
        )
        .await
        .map(drop)
    }

    /// `GetLowAccuracyTimeSynch` → `Ta0` (device clock, Unix seconds).
    pub async fn low_accuracy_time(&mut self) -> Result<u32, DeviceError> {
        let output = self
            .invoke(&amt_uri(TIME_SERVICE), "GetLowAccuracyTimeSynch", &[])
            .await?;
        output
            .property("Ta0")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| DeviceError::Malformed("GetLowAccuracyTimeSynch without Ta0".into()))
    }

    /// `SetHighAccuracyTimeSynch(Ta0, Tm1, Tm2)`.
    pub async fn set_high_accuracy_time(
        &mut self,
        ta0: u32,
        tm1: u32,
        tm2: u32,
    ) -> Result<(), DeviceError> {
        let (ta0, tm1, tm2) = (ta0.to_string(), tm1.to_string(), tm2.to_string());
        self.invoke(
            &amt_uri(TIME_SERVICE),
            "SetHighAccuracyTimeSynch",
            &[("Ta0", &ta0), ("Tm1", &tm1), ("Tm2", &tm2)],
        )
        .await
        .map(drop)
    }

    /// `GenerateKeyPair(KeyAlgorithm=0 (RSA), KeyLength=2048)` → the `InstanceID` of
    /// the new `AMT_PublicPrivateKeyPair`.
    pub async fn generate_key_pair(&mut self) -> Result<String, DeviceError> {
        let output = self
            .invoke(
                &amt_uri(KEY_SERVICE),
                "GenerateKeyPair",
                &[("KeyAlgorithm", "0"), ("KeyLength", "2048")],
            )
            .await?;
        epr_instance_id(&output, "KeyPair")
    }

    /// `AddKey(KeyBlob = base64 DER PKCS#1 RSAPrivateKey)` → the `InstanceID` of the
    /// new `AMT_PublicPrivateKeyPair`: for firmware without `GenerateKeyPair`
    /// (before AMT 6.2/7.0). The key is a secret: it is sent, never logged.
    pub async fn add_key(&mut self, private_key_der: &[u8]) -> Result<String, DeviceError> {
        let blob = Zeroizing::new(BASE64.encode(private_key_der));
        let output = self
            .invoke(&amt_uri(KEY_SERVICE), "AddKey", &[("KeyBlob", &blob)])
            .await?;
        epr_instance_id(&output, "CreatedKey")
    }

    /// The DER public key (PKCS#1 `RSAPublicKey`, §8) of key pair `key_pair_instance_id`.
    pub async fn public_key(&mut self, key_pair_instance_id: &str) -> Result<Vec<u8>, DeviceError> {
        let items = self
            .enumerate(&amt_uri(KEY_PAIR), "AMT_PublicPrivateKeyPair enumerate")
            .await?;
        public_key_of(&items, key_pair_instance_id)
    }

    /// `AddCertificate(CertificateBlob = base64 DER)` → `InstanceID` of the created
    /// `AMT_PublicKeyCertificate`.
    pub async fn add_certificate(&mut self, cert_der: &[u8]) -> Result<String, DeviceError> {
        let blob = BASE64.encode(cert_der);
        let output = self
            .invoke(
                &amt_uri(KEY_SERVICE),
                "AddCertificate",
                &[("CertificateBlob", &blob)],
            )
            .await?;
        epr_instance_id(&output, "CreatedCertificate")
    }

    /// WS-Transfer Create of `AMT_TLSCredentialContext` binding certificate
    /// `cert_instance_id` to the TLS protocol endpoint collection.
    pub async fn create_tls_credential_context(
        &mut self,
        cert_instance_id: &str,
    ) -> Result<(), DeviceError> {
        let uri = amt_uri(CREDENTIAL_CONTEXT);
        let body = credential_context_body(&uri, cert_instance_id);
        let id = self.next_id();
        let xml = self
            .send(
                wsman::create_request(&uri, id, &body),
                "AMT_TLSCredentialContext create",
            )
            .await?;
        wsman::expect_element(wsman::reply_body(&xml)?, NS_TRANSFER, "ResourceCreated").map(drop)
    }

    /// Whether the device already has a TLS credential context for its TLS endpoint
    /// collection (an earlier, interrupted provisioning attempt created it; AMT
    /// allows only one). Either spelling of the collection's name counts.
    pub async fn has_tls_credential_context(&mut self) -> Result<bool, DeviceError> {
        let items = self
            .enumerate(
                &amt_uri(CREDENTIAL_CONTEXT),
                "AMT_TLSCredentialContext enumerate",
            )
            .await?;
        Ok(items.iter().any(provides_tls_endpoint_collection))
    }

    /// Puts the remote `AMT_TLSSettingData` instance back with `Enabled=true`,
    /// `AcceptNonSecureConnections=true` (only where the instance has that property:
    /// AMT 16.1+ has not), `MutualAuthentication=false` and no `TrustedCN`, as
    /// MeshCentral does; with `local`, the local (LMS) instance too, `Enabled=true`
    /// and its other settings kept (MeshCentral, rpc-go). Takes effect at
    /// `CommitChanges`.
    pub async fn enable_tls(&mut self, local: bool) -> Result<(), DeviceError> {
        let uri = amt_uri(TLS_SETTING_DATA);
        let items = self.enumerate(&uri, "AMT_TLSSettingData enumerate").await?;
        let find = |id: &str| {
            items
                .iter()
                .find(|i| i.property("InstanceID") == Some(id))
                .cloned()
                .ok_or_else(|| DeviceError::Malformed(format!("no {id:?} instance")))
        };
        let mut remote = find(REMOTE_TLS_SETTINGS)?;
        let local_instance = if local {
            Some(find(LOCAL_TLS_SETTINGS)?)
        } else {
            None
        };
        drop(items);
        enable_remote_tls(&mut remote);
        self.put(
            &uri,
            &[("InstanceID", REMOTE_TLS_SETTINGS)],
            &remote,
            "AMT_TLSSettingData put",
        )
        .await?;
        if let Some(mut instance) = local_instance {
            instance.set_property("Enabled", "true");
            instance.remove_property("TrustedCN");
            self.put(
                &uri,
                &[("InstanceID", LOCAL_TLS_SETTINGS)],
                &instance,
                "AMT_TLSSettingData put (local)",
            )
            .await?;
        }
        Ok(())
    }

    /// `SetMEBxPassword(Password)`: a PKI-configured device needs it before
    /// `CommitChanges` while its MEBx password is the factory one (amt-pki.md §1.5).
    pub async fn set_mebx_password(&mut self, password: &str) -> Result<(), DeviceError> {
        self.invoke(
            &amt_uri(SETUP_SERVICE),
            "SetMEBxPassword",
            &[("Password", password)],
        )
        .await
        .map(drop)
    }

    /// `CommitChanges`; the device then restarts its network stack.
    pub async fn commit_changes(&mut self) -> Result<(), DeviceError> {
        self.invoke(&amt_uri(SETUP_SERVICE), "CommitChanges", &[])
            .await
            .map(drop)
    }
}

fn credential_context_body(uri: &str, cert_instance_id: &str) -> String {
    format!(
        r#"<h:{CREDENTIAL_CONTEXT} xmlns:h="{uri}"><h:ElementInContext>{}</h:ElementInContext><h:ElementProvidingContext>{}</h:ElementProvidingContext></h:{CREDENTIAL_CONTEXT}>"#,
        wsman::endpoint_reference(&amt_uri(CERTIFICATE), &[("InstanceID", cert_instance_id)]),
        wsman::endpoint_reference(
            &amt_uri(ENDPOINT_COLLECTION),
            &[("ElementName", TLS_ENDPOINT_COLLECTION)]
        ),
    )
}

fn enable_remote_tls(instance: &mut Element) {
    instance.set_property("MutualAuthentication", "false");
    instance.set_property("Enabled", "true");
    if instance.property("AcceptNonSecureConnections").is_some() {
        instance.set_property("AcceptNonSecureConnections", "true");
    }
    instance.remove_property("TrustedCN");
}

/// Whether a credential context's `ElementProvidingContext` names the TLS endpoint
/// collection, in either spelling.
fn provides_tls_endpoint_collection(context: &Element) -> bool {
    context
        .child("ElementProvidingContext")
        .and_then(|epr| epr.selector("ElementName"))
        .is_some_and(|name| {
            name == TLS_ENDPOINT_COLLECTION || name == TLS_ENDPOINT_COLLECTION_REPORTED
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::wsman::tests::reply;
    use crate::device::wsman::NS_ENUMERATION;

    const GWM: [&str; 4] = ["a", "b", "c", "g"];

    fn pull(class_uri: &str, items: &str) -> Vec<Element> {
        let xml = reply(
            GWM,
            &format!(r#"xmlns:h="{class_uri}""#),
            &format!("{NS_ENUMERATION}/PullResponse"),
            &format!("<g:PullResponse><g:Items>{items}</g:Items><g:EndOfSequence></g:EndOfSequence></g:PullResponse>"),
        );
        let page = wsman::parse_pull_response(&xml).expect("pull");
        assert!(page.next.is_none());
        page.items
    }

    /// Modelled on GWM's AMT_GeneralSettings pull fixture.
    fn general_settings_items() -> Vec<Element> {
        pull(
            &amt_uri(GENERAL_SETTINGS),
            "<h:AMT_GeneralSettings><h:AMTNetworkEnabled>1</h:AMTNetworkEnabled><h:DDNSPeriodicUpdateInterval>1440</h:DDNSPeriodicUpdateInterval><h:DDNSTTL>900</h:DDNSTTL><h:DDNSUpdateByDHCPServerEnabled>true</h:DDNSUpdateByDHCPServerEnabled><h:DDNSUpdateEnabled>false</h:DDNSUpdateEnabled><h:DHCPv6ConfigurationTimeout>0</h:DHCPv6ConfigurationTimeout><h:DigestRealm>Digest:6EE8C61BA74893E059F032EA919D699E</h:DigestRealm><h:DomainName></h:DomainName><h:ElementName>Intel(r) AMT: General Settings</h:ElementName><h:HostName>old-host</h:HostName><h:HostOSFQDN></h:HostOSFQDN><h:IdleWakeTimeout>65535</h:IdleWakeTimeout><h:InstanceID>Intel(r) AMT: General Settings</h:InstanceID><h:NetworkInterfaceEnabled>true</h:NetworkInterfaceEnabled><h:PingResponseEnabled>true</h:PingResponseEnabled><h:PowerSource>0</h:PowerSource><h:PreferredAddressFamily>0</h:PreferredAddressFamily><h:PresenceNotificationInterval>0</h:PresenceNotificationInterval><h:PrivacyLevel>0</h:PrivacyLevel><h:RmcpPingResponseEnabled>true</h:RmcpPingResponseEnabled><h:SharedFQDN>true</h:SharedFQDN><h:WsmanOnlyMode>false</h:WsmanOnlyMode></h:AMT_GeneralSettings>",
        )
    }

    #[test]
    fn general_settings_from_pull() {
        let items = general_settings_items();
        let gs = GeneralSettings::from_instance(&items[0]).expect("settings");
        assert_eq!(gs.digest_realm, "Digest:6EE8C61BA74893E059F032EA919D699E");
        assert_eq!(gs.host_name, "old-host");
        assert_eq!(gs.domain_name, "");
    }

    #[test]
    fn general_settings_put_keeps_everything_else() {
        let mut instance = general_settings_items().remove(0);
        let before = instance.children.len();
        instance.set_property("HostName", "pc-0042");
        instance.set_property("DomainName", "corp.example & co");
        assert_eq!(instance.children.len(), before);
        let xml = wsman::put_request(&amt_uri(GENERAL_SETTINGS), 5, &[], &instance);
        let doc = roxmltree::Document::parse(&xml).expect("xml");
        let uri = amt_uri(GENERAL_SETTINGS);
        let text = |name: &str| {
            doc.descendants()
                .find(|n| {
                    n.tag_name().namespace() == Some(uri.as_str()) && n.tag_name().name() == name
                })
                .and_then(|n| n.text())
                .map(str::to_string)
        };
        assert_eq!(text("HostName").as_deref(), Some("pc-0042"));
        assert_eq!(text("DomainName").as_deref(), Some("corp.example & co"));
        assert_eq!(text("DDNSTTL").as_deref(), Some("900"));
        assert_eq!(
            text("DigestRealm").as_deref(),
            Some("Digest:6EE8C61BA74893E059F032EA919D699E")
        );
    }

    #[test]
    fn general_settings_without_realm_is_malformed() {
        let items = pull(
            &amt_uri(GENERAL_SETTINGS),
            "<h:AMT_GeneralSettings><h:HostName>x</h:HostName></h:AMT_GeneralSettings>",
        );
        assert!(matches!(
            GeneralSettings::from_instance(&items[0]),
            Err(DeviceError::Malformed(_))
        ));
    }

    #[test]
    fn software_identity_amt_version() {
        // Modelled on GWM's CIM_SoftwareIdentity pull fixture (§4.3 row 2).
        let items = pull(
            &cim_uri(SOFTWARE_IDENTITY),
            "<h:CIM_SoftwareIdentity><h:InstanceID>Flash</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>12.0.67</h:VersionString></h:CIM_SoftwareIdentity>\
             <h:CIM_SoftwareIdentity><h:InstanceID>Netstack</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>12.0.67</h:VersionString></h:CIM_SoftwareIdentity>\
             <h:CIM_SoftwareIdentity><h:InstanceID>AMTApps</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>12.0.67</h:VersionString></h:CIM_SoftwareIdentity>\
             <h:CIM_SoftwareIdentity><h:InstanceID>AMT</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>12.0.67</h:VersionString></h:CIM_SoftwareIdentity>\
             <h:CIM_SoftwareIdentity><h:InstanceID>Sku</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>16392</h:VersionString></h:CIM_SoftwareIdentity>\
             <h:CIM_SoftwareIdentity><h:InstanceID>VendorID</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>8086</h:VersionString></h:CIM_SoftwareIdentity>\
             <h:CIM_SoftwareIdentity><h:InstanceID>Build Number</h:InstanceID><h:IsEntity>true</h:IsEntity><h:VersionString>1579</h:VersionString></h:CIM_SoftwareIdentity>",
        );
        assert_eq!(items.len(), 7);
        assert_eq!(amt_version_of(&items).expect("version"), "12.0.67");
        assert!(matches!(
            amt_version_of(&items[..3]),
            Err(DeviceError::Malformed(_))
        ));
    }

    #[test]
    fn public_private_key_pair_der() {
        let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
        let pkcs1 = rsa.public_key_to_der_pkcs1().expect("der");
        let der_key = BASE64.encode(&pkcs1);
        assert!(der_key.starts_with("MIIBCgKCAQEA")); // as on real firmware (§8)
        let items = pull(
            &amt_uri(KEY_PAIR),
            &format!(
                "<h:AMT_PublicPrivateKeyPair><h:DERKey>AAAA</h:DERKey><h:ElementName>Intel(r) AMT Key</h:ElementName><h:InstanceID>Intel(r) AMT Key: Handle: 0</h:InstanceID></h:AMT_PublicPrivateKeyPair>\
                 <h:AMT_PublicPrivateKeyPair><h:DERKey>{}\n{}</h:DERKey><h:ElementName>Intel(r) AMT Key</h:ElementName><h:InstanceID>Intel(r) AMT Key: Handle: 1</h:InstanceID></h:AMT_PublicPrivateKeyPair>",
                &der_key[..64],
                &der_key[64..]
            ),
        );
        let der = public_key_of(&items, "Intel(r) AMT Key: Handle: 1").expect("der");
        assert_eq!(der, pkcs1);
        assert!(matches!(
            public_key_of(&items, "Intel(r) AMT Key: Handle: 9"),
            Err(DeviceError::Malformed(_))
        ));
    }

    fn output(class: &str, method: &str, inner: &str) -> String {
        let uri = amt_uri(class);
        reply(
            GWM,
            &format!(r#"xmlns:h="{uri}""#),
            &format!("{uri}/{method}Response"),
            &format!("<h:{method}_OUTPUT>{inner}</h:{method}_OUTPUT>"),
        )
    }

    #[test]
    fn generate_key_pair_and_add_certificate_eprs() {
        let epr = |name: &str, class: &str, id: &str| {
            format!(
                r#"<h:{name}><b:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:Address><b:ReferenceParameters><c:ResourceURI>{}</c:ResourceURI><c:SelectorSet><c:Selector Name="InstanceID">{id}</c:Selector></c:SelectorSet></b:ReferenceParameters></h:{name}>"#,
                amt_uri(class)
            )
        };
        let xml = output(
            KEY_SERVICE,
            "GenerateKeyPair",
            &format!(
                "{}<h:ReturnValue>0</h:ReturnValue>",
                epr("KeyPair", KEY_PAIR, "Intel(r) AMT Key: Handle: 0")
            ),
        );
        let out = wsman::parse_method_output(&xml, &amt_uri(KEY_SERVICE), "GenerateKeyPair")
            .expect("output");
        assert_eq!(
            epr_instance_id(&out, "KeyPair").expect("id"),
            "Intel(r) AMT Key: Handle: 0"
        );
        let xml = output(
            KEY_SERVICE,
            "AddCertificate",
            &format!(
                "{}<h:ReturnValue>0</h:ReturnValue>",
                epr(
                    "CreatedCertificate",
                    CERTIFICATE,
                    "Intel(r) AMT Certificate: Handle: 1"
                )
            ),
        );
        let out = wsman::parse_method_output(&xml, &amt_uri(KEY_SERVICE), "AddCertificate")
            .expect("output");
        assert_eq!(
            epr_instance_id(&out, "CreatedCertificate").expect("id"),
            "Intel(r) AMT Certificate: Handle: 1"
        );
        assert!(matches!(
            epr_instance_id(&out, "KeyPair"),
            Err(DeviceError::Malformed(_))
        ));
        let dup = output(
            KEY_SERVICE,
            "AddCertificate",
            "<h:ReturnValue>2058</h:ReturnValue>",
        );
        assert!(matches!(
            wsman::parse_method_output(&dup, &amt_uri(KEY_SERVICE), "AddCertificate"),
            Err(DeviceError::ReturnValue {
                method: "AddCertificate",
                code: 2058,
                name: "DUPLICATE"
            })
        ));
    }

    #[test]
    fn credential_context_create_body() {
        let uri = amt_uri(CREDENTIAL_CONTEXT);
        let xml = wsman::create_request(
            &uri,
            9,
            &credential_context_body(&uri, "Intel(r) AMT Certificate: Handle: 1"),
        );
        let doc = roxmltree::Document::parse(&xml).expect("xml");
        let selector_in = |parent: &str| {
            let p = doc
                .descendants()
                .find(|n| {
                    n.tag_name().namespace() == Some(uri.as_str()) && n.tag_name().name() == parent
                })
                .expect(parent);
            let sel = p
                .descendants()
                .find(|n| n.tag_name().name() == "Selector")
                .expect("selector");
            let res = p
                .descendants()
                .find(|n| n.tag_name().name() == "ResourceURI")
                .and_then(|n| n.text())
                .expect("uri")
                .to_string();
            (
                sel.attribute("Name").map(str::to_string),
                sel.text().map(str::to_string),
                res,
            )
        };
        assert_eq!(
            selector_in("ElementInContext"),
            (
                Some("InstanceID".into()),
                Some("Intel(r) AMT Certificate: Handle: 1".into()),
                amt_uri(CERTIFICATE)
            )
        );
        assert_eq!(
            selector_in("ElementProvidingContext"),
            (
                Some("ElementName".into()),
                Some("TLSProtocolEndpointInstances Collection".into()),
                amt_uri(ENDPOINT_COLLECTION)
            )
        );
    }

    #[test]
    fn tls_setting_data_is_enabled_for_remote_only() {
        let mut items = pull(
            &amt_uri(TLS_SETTING_DATA),
            "<h:AMT_TLSSettingData><h:AcceptNonSecureConnections>false</h:AcceptNonSecureConnections><h:ElementName>Intel(r) AMT 802.3 TLS Settings</h:ElementName><h:Enabled>false</h:Enabled><h:InstanceID>Intel(r) AMT 802.3 TLS Settings</h:InstanceID><h:MutualAuthentication>true</h:MutualAuthentication><h:TrustedCN>old</h:TrustedCN></h:AMT_TLSSettingData>\
             <h:AMT_TLSSettingData><h:AcceptNonSecureConnections>true</h:AcceptNonSecureConnections><h:ElementName>Intel(r) AMT LMS TLS Settings</h:ElementName><h:Enabled>false</h:Enabled><h:InstanceID>Intel(r) AMT LMS TLS Settings</h:InstanceID><h:MutualAuthentication>false</h:MutualAuthentication></h:AMT_TLSSettingData>",
        );
        let remote = &mut items[0];
        enable_remote_tls(remote);
        assert_eq!(remote.property("Enabled"), Some("true"));
        assert_eq!(remote.property("AcceptNonSecureConnections"), Some("true"));
        assert_eq!(remote.property("MutualAuthentication"), Some("false"));
        assert_eq!(remote.property("TrustedCN"), None);
        assert_eq!(remote.property("ElementName"), Some(REMOTE_TLS_SETTINGS));
    }

    #[test]
    fn digest_password_is_base64_of_raw_md5() {
        // Computed independently: base64(md5(b"admin:Digest:F3EB…C5:P@ssw0rd")).
        let dp = digest_password(
            "admin",
            "Digest:F3EB554784E729164447A89F60B641C5",
            "P@ssw0rd",
        );
        assert_eq!(dp, "CuCDARuuPYT8SGzkq0SuHQ==");
        assert_eq!(BASE64.decode(&dp).expect("b64").len(), 16);
    }

    #[test]
    fn time_and_uuid_outputs() {
        let xml = output(
            TIME_SERVICE,
            "GetLowAccuracyTimeSynch",
            "<h:Ta0>1644240911</h:Ta0><h:ReturnValue>0</h:ReturnValue>",
        );
        let out =
            wsman::parse_method_output(&xml, &amt_uri(TIME_SERVICE), "GetLowAccuracyTimeSynch")
                .expect("out");
        assert_eq!(out.property("Ta0"), Some("1644240911"));
        let raw = decode_base64("E67jVdK/u2EXoIiu3XA36g==", "UUID").expect("uuid");
        assert_eq!(hex::encode(raw), "13aee355d2bfbb6117a088aedd7037ea");
        assert!(decode_base64("not base64!", "UUID").is_err());
    }

    #[test]
    fn the_version_comes_from_the_server_header_when_no_instance_names_it() {
        assert_eq!(
            version_from_server_header("Intel(R) Active Management Technology 6.0.40"),
            Some("6.0.40".into())
        );
        for other in [
            "nginx/1.25",
            "Intel(R) Active Management Technology ",
            "Intel(R) Active Management Technology 8.1; rm -rf",
        ] {
            assert_eq!(version_from_server_header(other), None, "{other}");
        }
    }

    /// Contexts read back from a device name the collection with a space (Intel's
    /// fixtures); vprov creates them without (MeshCentral, go-wsman-messages).
    #[test]
    fn either_spelling_of_the_endpoint_collection_is_read() {
        let uri = amt_uri(CREDENTIAL_CONTEXT);
        let context = |name: &str| {
            let items = pull(
                &uri,
                &format!(
                    r#"<h:AMT_TLSCredentialContext><h:ElementProvidingContext><b:Address>/wsman</b:Address><b:ReferenceParameters><c:ResourceURI>{}</c:ResourceURI><c:SelectorSet><c:Selector Name="ElementName">{name}</c:Selector></c:SelectorSet></b:ReferenceParameters></h:ElementProvidingContext></h:AMT_TLSCredentialContext>"#,
                    amt_uri(ENDPOINT_COLLECTION)
                ),
            );
            provides_tls_endpoint_collection(&items[0])
        };
        assert!(context("TLSProtocolEndpoint Instances Collection"));
        assert!(context("TLSProtocolEndpointInstances Collection"));
        assert!(!context("Some Other Collection"));
    }

    /// AMT 16.1+ has no `AcceptNonSecureConnections` on its TLS settings: it must not
    /// be added (RPS's tests).
    #[test]
    fn accept_non_secure_is_only_set_where_the_device_has_it() {
        let uri = amt_uri(TLS_SETTING_DATA);
        let mut modern = pull(
            &uri,
            "<h:AMT_TLSSettingData><h:Enabled>false</h:Enabled><h:InstanceID>Intel(r) AMT 802.3 TLS Settings</h:InstanceID><h:NonSecureConnectionsSupported>false</h:NonSecureConnectionsSupported></h:AMT_TLSSettingData>",
        )
        .remove(0);
        enable_remote_tls(&mut modern);
        assert_eq!(modern.property("Enabled"), Some("true"));
        assert_eq!(modern.property("AcceptNonSecureConnections"), None);
        let mut older = pull(
            &uri,
            "<h:AMT_TLSSettingData><h:AcceptNonSecureConnections>false</h:AcceptNonSecureConnections><h:Enabled>false</h:Enabled></h:AMT_TLSSettingData>",
        )
        .remove(0);
        enable_remote_tls(&mut older);
        assert_eq!(older.property("AcceptNonSecureConnections"), Some("true"));
    }
}
