//! WS-Management (SOAP 1.2) envelopes and reply parsing.
//!
//! Owns the request shapes of `amt-protocol.md` §4.2 (as in Intel's go-wsman-messages):
//! header `Action`, `To` = `/wsman`, `ResourceURI`, `MessageID`, anonymous `ReplyTo`,
//! `OperationTimeout` `PT60S`, optional `SelectorSet`; bodies for Enumerate, Pull, Put,
//! Create and method calls (`<h:Method_INPUT xmlns:h="ResourceURI">`). Text values are
//! XML-escaped with `quick_xml::escape::escape`.
//!
//! Replies are parsed with roxmltree strictly by namespace URI and local name, never
//! by prefix. SOAP faults, non-zero `ReturnValue`s and non-XML replies become typed
//! [`DeviceError`]s; nothing here panics on hostile input.

use quick_xml::escape::escape;
use roxmltree::{Document, Node};

use super::DeviceError;

pub(crate) const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub(crate) const NS_ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub(crate) const NS_WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub(crate) const NS_ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
pub(crate) const NS_TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";
const NS_XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";
const AMT_BASE: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
const CIM_BASE: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/";

/// Deepest element nesting accepted in a reply (real replies nest < 12 levels).
const MAX_DEPTH: usize = 32;

/// Resource URI of an `AMT_*` class.
pub(crate) fn amt_uri(class: &str) -> String {
    format!("{AMT_BASE}{class}")
}

/// Resource URI of a `CIM_*` class.
pub(crate) fn cim_uri(class: &str) -> String {
    format!("{CIM_BASE}{class}")
}

/// Builds a complete envelope. `selectors` are `(Name, value)` pairs; `body` is
/// already-serialised XML placed inside `<s:Body>`.
pub(crate) fn envelope(
    action: &str,
    resource_uri: &str,
    message_id: u64,
    selectors: &[(&str, &str)],
    body: &str,
) -> String {
    let mut x = String::with_capacity(1024 + body.len());
    x.push_str(r#"<?xml version="1.0" encoding="utf-8"?>"#);
    x.push_str(&format!(
        r#"<s:Envelope xmlns:s="{NS_SOAP}" xmlns:a="{NS_ADDRESSING}" xmlns:w="{NS_WSMAN}" xmlns:xsi="{NS_XSI}"><s:Header>"#
    ));
    x.push_str(&format!(
        "<a:Action>{}</a:Action><a:To>/wsman</a:To><w:ResourceURI>{}</w:ResourceURI>",
        escape(action),
        escape(resource_uri)
    ));
    x.push_str(&format!(
        "<a:MessageID>uuid:00000000-8086-8086-8086-{message_id:012X}</a:MessageID>"
    ));
    x.push_str(&format!(
        "<a:ReplyTo><a:Address>{ANONYMOUS}</a:Address></a:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout>"
    ));
    if !selectors.is_empty() {
        x.push_str(&selector_set(selectors));
    }
    x.push_str("</s:Header><s:Body>");
    x.push_str(body);
    x.push_str("</s:Body></s:Envelope>");
    x
}

/// `<w:SelectorSet>` with escaped names and values (prefix `w` bound by [`envelope`]).
pub(crate) fn selector_set(selectors: &[(&str, &str)]) -> String {
    let mut x = String::from("<w:SelectorSet>");
    for (name, value) in selectors {
        x.push_str(&format!(
            r#"<w:Selector Name="{}">{}</w:Selector>"#,
            escape(*name),
            escape(*value)
        ));
    }
    x.push_str("</w:SelectorSet>");
    x
}

/// An endpoint reference to `resource_uri` selected by `selectors` (for Create bodies).
pub(crate) fn endpoint_reference(resource_uri: &str, selectors: &[(&str, &str)]) -> String {
    format!(
        "<a:Address>/wsman</a:Address><a:ReferenceParameters><w:ResourceURI>{}</w:ResourceURI>{}</a:ReferenceParameters>",
        escape(resource_uri),
        selector_set(selectors)
    )
}

pub(crate) fn enumerate_request(resource_uri: &str, message_id: u64) -> String {
    envelope(
        &format!("{NS_ENUMERATION}/Enumerate"),
        resource_uri,
        message_id,
        &[],
        &format!(r#"<Enumerate xmlns="{NS_ENUMERATION}"/>"#),
    )
}

pub(crate) fn pull_request(resource_uri: &str, message_id: u64, context: &str) -> String {
    envelope(
        &format!("{NS_ENUMERATION}/Pull"),
        resource_uri,
        message_id,
        &[],
        &format!(
            r#"<Pull xmlns="{NS_ENUMERATION}"><EnumerationContext>{}</EnumerationContext><MaxElements>999</MaxElements><MaxCharacters>99999</MaxCharacters></Pull>"#,
            escape(context)
        ),
    )
}

/// WS-Transfer Put of `instance` (serialised with [`Element::to_xml`]).
pub(crate) fn put_request(
    resource_uri: &str,
    message_id: u64,
    selectors: &[(&str, &str)],
    instance: &Element,
) -> String {
    envelope(
        &format!("{NS_TRANSFER}/Put"),
        resource_uri,
        message_id,
        selectors,
        &instance.to_xml(),
    )
}

/// WS-Transfer Create with an already-serialised instance body.
pub(crate) fn create_request(resource_uri: &str, message_id: u64, body: &str) -> String {
    envelope(
        &format!("{NS_TRANSFER}/Create"),
        resource_uri,
        message_id,
        &[],
        body,
    )
}

/// A method call: Action `<ResourceURI>/<Method>`, body `<h:Method_INPUT>` with
/// text parameters in order.
pub(crate) fn invoke_request(
    resource_uri: &str,
    method: &str,
    message_id: u64,
    params: &[(&str, &str)],
) -> String {
    let mut body = format!(r#"<h:{method}_INPUT xmlns:h="{}">"#, escape(resource_uri));
    for (name, value) in params {
        body.push_str(&format!("<h:{name}>{}</h:{name}>", escape(*value)));
    }
    body.push_str(&format!("</h:{method}_INPUT>"));
    envelope(
        &format!("{resource_uri}/{method}"),
        resource_uri,
        message_id,
        &[],
        &body,
    )
}

/// A method invocation on the instance `selectors` name, whose single reference
/// parameter `epr_name` points at `epr_uri` / `epr_selectors`, plus plain `params`
/// (e.g. `CIM_PowerManagementService.RequestPowerStateChange`).
pub(crate) fn invoke_with_reference_request(
    resource_uri: &str,
    method: &str,
    message_id: u64,
    selectors: &[(&str, &str)],
    params: &[(&str, &str)],
    (epr_name, epr_uri, epr_selectors): (&str, &str, &[(&str, &str)]),
) -> String {
    let mut body = format!(r#"<h:{method}_INPUT xmlns:h="{}">"#, escape(resource_uri));
    for (name, value) in params {
        body.push_str(&format!("<h:{name}>{}</h:{name}>", escape(*value)));
    }
    body.push_str(&format!(
        "<h:{epr_name}>{}</h:{epr_name}>",
        endpoint_reference(epr_uri, epr_selectors)
    ));
    body.push_str(&format!("</h:{method}_INPUT>"));
    envelope(
        &format!("{resource_uri}/{method}"),
        resource_uri,
        message_id,
        selectors,
        &body,
    )
}

/// An owned XML element (namespace URI + local name), used for instances read from
/// the device and written back with Put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub ns: String,
    pub name: String,
    /// `(namespace, local name, value)`; namespace `""` for unqualified attributes.
    pub attrs: Vec<(String, String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// Copies a parsed node; its depth was bounded by [`check_shape`] before parsing.
    fn from_node(node: Node<'_, '_>) -> Element {
        let mut children = Vec::new();
        let mut text = String::new();
        for child in node.children() {
            if child.is_element() {
                children.push(Element::from_node(child));
            } else if child.is_text() {
                text.push_str(child.text().unwrap_or_default());
            }
        }
        Element {
            ns: node.tag_name().namespace().unwrap_or_default().to_string(),
            name: node.tag_name().name().to_string(),
            attrs: node
                .attributes()
                .map(|a| {
                    (
                        a.namespace().unwrap_or_default().to_string(),
                        a.name().to_string(),
                        a.value().to_string(),
                    )
                })
                .collect(),
            text: if children.is_empty() {
                text
            } else {
                String::new()
            },
            children,
        }
    }

    /// How many elements this one holds, itself included.
    pub(crate) fn element_count(&self) -> usize {
        1 + self
            .children
            .iter()
            .map(Element::element_count)
            .sum::<usize>()
    }

    /// The first child in this element's namespace named `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.ns == self.ns && c.name == name)
    }

    /// The text of the child property `name` (same namespace), trimmed.
    pub(crate) fn property(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// Sets property `name` to `value`, replacing any content (e.g. `xsi:nil`); appends
    /// it when absent.
    pub(crate) fn set_property(&mut self, name: &str, value: &str) {
        let ns = self.ns.clone();
        match self
            .children
            .iter_mut()
            .find(|c| c.ns == ns && c.name == name)
        {
            Some(c) => {
                c.text = value.to_string();
                c.children.clear();
                c.attrs.clear();
            }
            None => self.children.push(Element {
                ns,
                name: name.to_string(),
                attrs: Vec::new(),
                text: value.to_string(),
                children: Vec::new(),
            }),
        }
    }

    /// Removes every child property `name` (same namespace).
    pub(crate) fn remove_property(&mut self, name: &str) {
        let ns = self.ns.clone();
        self.children.retain(|c| !(c.ns == ns && c.name == name));
    }

    /// The text of the first `w:Selector Name="<name>"` anywhere below this element
    /// (the selector of an endpoint reference).
    pub(crate) fn selector(&self, name: &str) -> Option<&str> {
        if self.ns == NS_WSMAN
            && self.name == "Selector"
            && self
                .attrs
                .iter()
                .any(|(ns, n, v)| ns.is_empty() && n == "Name" && v == name)
        {
            return Some(self.text.trim());
        }
        self.children.iter().find_map(|c| c.selector(name))
    }

    /// Serialises the element: its own namespace is bound to prefix `h`, others are
    /// declared where used, so the output stands alone inside any envelope.
    pub(crate) fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write(&self.ns, None, &mut out);
        out
    }

    fn write(&self, h_ns: &str, default_ns: Option<&str>, out: &mut String) {
        let is_root = default_ns.is_none() && out.is_empty();
        let tag = if self.ns == h_ns && !h_ns.is_empty() {
            format!("h:{}", self.name)
        } else {
            self.name.clone()
        };
        out.push('<');
        out.push_str(&tag);
        if is_root && !h_ns.is_empty() {
            out.push_str(&format!(r#" xmlns:h="{}""#, escape(h_ns)));
        }
        let mut child_default = default_ns;
        if self.ns != h_ns || h_ns.is_empty() {
            if default_ns != Some(self.ns.as_str()) {
                out.push_str(&format!(r#" xmlns="{}""#, escape(self.ns.as_str())));
            }
            child_default = Some(self.ns.as_str());
        }
        for (i, (ns, name, value)) in self.attrs.iter().enumerate() {
            let value = escape(value.as_str());
            if ns.is_empty() {
                out.push_str(&format!(r#" {name}="{value}""#));
            } else if ns == NS_XML {
                out.push_str(&format!(r#" xml:{name}="{value}""#));
            } else {
                out.push_str(&format!(
                    r#" xmlns:p{i}="{}" p{i}:{name}="{value}""#,
                    escape(ns.as_str())
                ));
            }
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        out.push_str(&escape(self.text.as_str()));
        for child in &self.children {
            child.write(h_ns, child_default.or(Some("")), out);
        }
        out.push_str(&format!("</{tag}>"));
    }
}

/// Most elements accepted in one reply, and kept from one enumeration. A real Pull
/// page (AMT's envelopes stay under MeshCentral's `MaxEnvelopeSize` of 153,600
/// bytes) holds a few hundred; an owned [`Element`] costs ~200 bytes, so this bounds
/// what one job keeps from a hostile device to about 1 MB.
pub(crate) const MAX_ELEMENTS: usize = 4096;
/// Most XML nodes (elements, attributes' text, text) roxmltree may build for a reply.
const MAX_NODES: u32 = 4 * MAX_ELEMENTS as u32;

/// Refuses XML nested deeper than [`MAX_DEPTH`] or holding more than [`MAX_ELEMENTS`]
/// elements, with a streaming pass that builds no tree. roxmltree parses
/// recursively, so a reply of a few thousand nested elements would overflow a
/// worker's stack *before* any check on the tree could run: every parser of device
/// input calls this first.
pub(crate) fn check_shape(xml: &str) -> Result<(), DeviceError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut elements = 0usize;
    loop {
        let event = reader.read_event();
        if matches!(event, Ok(Event::Start(_) | Event::Empty(_))) {
            elements += 1;
            if elements > MAX_ELEMENTS {
                return Err(DeviceError::Malformed(format!(
                    "reply holds more than {MAX_ELEMENTS} XML elements"
                )));
            }
        }
        match event {
            Ok(Event::Start(_)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(DeviceError::Malformed("XML nested too deeply".into()));
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            // Malformed XML is roxmltree's to report, with its position.
            Err(_) => return Ok(()),
        }
    }
}

/// Parses a reply body and returns the element children of `s:Body`, after turning a
/// SOAP fault into [`DeviceError::Fault`].
pub(crate) fn reply_body(xml: &str) -> Result<Vec<Element>, DeviceError> {
    check_shape(xml)?;
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    let doc = Document::parse_with_options(xml, options)
        .map_err(|e| DeviceError::Malformed(format!("reply is not XML: {e}")))?;
    let root = doc.root_element();
    if !is(root, NS_SOAP, "Envelope") {
        return Err(DeviceError::Malformed(
            "reply is not a SOAP 1.2 envelope".into(),
        ));
    }
    let body = root
        .children()
        .find(|n| is(*n, NS_SOAP, "Body"))
        .ok_or_else(|| DeviceError::Malformed("SOAP envelope without Body".into()))?;
    if let Some(fault) = body.children().find(|n| is(*n, NS_SOAP, "Fault")) {
        return Err(fault_error(fault));
    }
    Ok(body
        .children()
        .filter(Node::is_element)
        .map(Element::from_node)
        .collect())
}

/// Whether a reply body is a SOAP fault; `Some` carries the fault.
pub(crate) fn fault_in(xml: &str) -> Option<DeviceError> {
    match reply_body(xml) {
        Err(fault @ DeviceError::Fault { .. }) => Some(fault),
        _ => None,
    }
}

fn is(node: Node<'_, '_>, ns: &str, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace() == Some(ns) && node.tag_name().name() == name
}

fn soap_child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| is(*c, NS_SOAP, name))
}

fn fault_error(fault: Node<'_, '_>) -> DeviceError {
    let child = soap_child;
    let value_of = |n: Option<Node<'_, '_>>| {
        n.and_then(|n| child(n, "Value"))
            .and_then(|v| v.text())
            .map(|t| local_part(t.trim()).to_string())
            .unwrap_or_default()
    };
    let code = child(fault, "Code");
    let subcode = code.and_then(|c| child(c, "Subcode"));
    let reason = child(fault, "Reason")
        .and_then(|r| r.children().find(|c| is(*c, NS_SOAP, "Text")))
        .and_then(|t| t.text())
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    DeviceError::Fault {
        code: value_of(code),
        subcode: value_of(subcode),
        reason,
    }
}

/// `prefix:Local` → `Local` (fault codes are QNames; prefixes carry no meaning).
fn local_part(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, l)| l)
}

/// The single body element `ns`:`name`, or Malformed.
pub(crate) fn expect_element(
    body: Vec<Element>,
    ns: &str,
    name: &str,
) -> Result<Element, DeviceError> {
    body.into_iter()
        .find(|e| e.ns == ns && e.name == name)
        .ok_or_else(|| DeviceError::Malformed(format!("reply has no {name} element")))
}

/// The `EnumerationContext` of an EnumerateResponse.
pub(crate) fn parse_enumerate_response(xml: &str) -> Result<String, DeviceError> {
    let response = expect_element(reply_body(xml)?, NS_ENUMERATION, "EnumerateResponse")?;
    response
        .property("EnumerationContext")
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .ok_or_else(|| DeviceError::Malformed("EnumerateResponse without context".into()))
}

/// One page of a Pull.
#[derive(Debug)]
pub(crate) struct PullPage {
    pub items: Vec<Element>,
    /// Context for the next Pull; `None` when the sequence ended.
    pub next: Option<String>,
}

pub(crate) fn parse_pull_response(xml: &str) -> Result<PullPage, DeviceError> {
    let response = expect_element(reply_body(xml)?, NS_ENUMERATION, "PullResponse")?;
    let end = response.child("EndOfSequence").is_some();
    let next = response
        .property("EnumerationContext")
        .filter(|c| !end && !c.is_empty())
        .map(str::to_string);
    let items = response
        .children
        .into_iter()
        .find(|c| c.ns == NS_ENUMERATION && c.name == "Items")
        .map(|i| i.children)
        .unwrap_or_default();
    Ok(PullPage { items, next })
}

/// The `<Method>_OUTPUT` element of a method reply in namespace `resource_uri`,
/// checked for `ReturnValue` 0.
pub(crate) fn parse_method_output(
    xml: &str,
    resource_uri: &str,
    method: &'static str,
) -> Result<Element, DeviceError> {
    let output = expect_element(reply_body(xml)?, resource_uri, &format!("{method}_OUTPUT"))?;
    let code: u32 = output
        .property("ReturnValue")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| DeviceError::Malformed(format!("{method} reply without ReturnValue")))?;
    if code != 0 {
        return Err(DeviceError::ReturnValue {
            method,
            code,
            name: return_value_name(code),
        });
    }
    Ok(output)
}

/// Intel's names for `ReturnValue` codes (`amt-protocol.md` §4.3, §8).
pub(crate) fn return_value_name(code: u32) -> &'static str {
    match code {
        0 => "SUCCESS",
        1 => "INTERNAL_ERROR",
        12 => "INVALID_NAME",
        16 => "NOT_PERMITTED",
        23 => "MAX_LIMIT_REACHED",
        34 => "INVALID_TIME",
        36 => "INVALID_PARAMETER",
        38 => "FLASH_WRITE_LIMIT_EXCEEDED",
        2054 => "INVALID_PASSWORD",
        2057 => "DATA_MISSING",
        2058 => "DUPLICATE",
        2062 => "INVALID_KEY",
        2063 => "INVALID_CERTIFICATE",
        2076 => "BLOCKING_COMPONENT",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Wraps a body in a reply envelope in the style of GWM's fixtures, with the SOAP,
    /// addressing, WS-Man and enumeration namespaces bound to `prefixes`.
    pub(crate) fn reply(prefixes: [&str; 4], extra_ns: &str, action: &str, body: &str) -> String {
        let [s, b, c, g] = prefixes;
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><{s}:Envelope xmlns:{s}="{NS_SOAP}" xmlns:{b}="{NS_ADDRESSING}" xmlns:{c}="{NS_WSMAN}" xmlns:{g}="{NS_ENUMERATION}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" {extra_ns}><{s}:Header><{b}:To>{ANONYMOUS}</{b}:To><{b}:RelatesTo>1</{b}:RelatesTo><{b}:Action {s}:mustUnderstand="true">{action}</{b}:Action><{b}:MessageID>uuid:00000000-8086-8086-8086-000000000061</{b}:MessageID></{s}:Header><{s}:Body>{body}</{s}:Body></{s}:Envelope>"#
        )
    }

    const GWM: [&str; 4] = ["a", "b", "c", "g"];

    fn parse(xml: &str) -> Document<'_> {
        Document::parse(xml).expect("request is well-formed XML")
    }

    fn find<'a>(doc: &'a Document<'a>, ns: &str, name: &str) -> Node<'a, 'a> {
        doc.descendants()
            .find(|n| is(*n, ns, name))
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    fn header_checks(xml: &str, action: &str, uri: &str) {
        let doc = parse(xml);
        assert!(is(doc.root_element(), NS_SOAP, "Envelope"));
        assert_eq!(find(&doc, NS_ADDRESSING, "Action").text(), Some(action));
        assert_eq!(find(&doc, NS_WSMAN, "ResourceURI").text(), Some(uri));
        assert_eq!(find(&doc, NS_ADDRESSING, "To").text(), Some("/wsman"));
        assert_eq!(
            find(&doc, NS_WSMAN, "OperationTimeout").text(),
            Some("PT60S")
        );
        let reply_to = find(&doc, NS_ADDRESSING, "ReplyTo");
        assert_eq!(
            reply_to
                .children()
                .find(|n| is(*n, NS_ADDRESSING, "Address"))
                .and_then(|n| n.text()),
            Some(ANONYMOUS)
        );
        assert!(find(&doc, NS_ADDRESSING, "MessageID")
            .text()
            .is_some_and(|t| t.starts_with("uuid:")));
    }

    #[test]
    fn get_uuid_request() {
        let uri = amt_uri("AMT_SetupAndConfigurationService");
        let xml = invoke_request(&uri, "GetUuid", 7, &[]);
        header_checks(&xml, &format!("{uri}/GetUuid"), &uri);
        let doc = parse(&xml);
        let input = find(&doc, &uri, "GetUuid_INPUT");
        assert!(is(input.parent().expect("parent"), NS_SOAP, "Body"));
        assert!(xml.contains("uuid:00000000-8086-8086-8086-000000000007"));
        assert!(!xml.contains("SelectorSet"));
    }

    #[test]
    fn method_parameters_are_escaped() {
        let uri = amt_uri("AMT_AuthorizationService");
        let xml = invoke_request(
            &uri,
            "SetAdminAclEntryEx",
            1,
            &[("Username", "a<d>&\"min"), ("DigestPassword", "x/y+z==")],
        );
        assert!(xml.contains("<h:Username>a&lt;d&gt;&amp;&quot;min</h:Username>"));
        let doc = parse(&xml);
        assert_eq!(find(&doc, &uri, "Username").text(), Some("a<d>&\"min"));
        assert_eq!(find(&doc, &uri, "DigestPassword").text(), Some("x/y+z=="));
    }

    #[test]
    fn enumerate_and_pull_requests() {
        let uri = amt_uri("AMT_GeneralSettings");
        let xml = enumerate_request(&uri, 0);
        header_checks(&xml, &format!("{NS_ENUMERATION}/Enumerate"), &uri);
        find(&parse(&xml), NS_ENUMERATION, "Enumerate");

        let xml = pull_request(&uri, 1, "14000000-0000-0000-0000-000000000000<&>");
        header_checks(&xml, &format!("{NS_ENUMERATION}/Pull"), &uri);
        let doc = parse(&xml);
        assert_eq!(
            find(&doc, NS_ENUMERATION, "EnumerationContext").text(),
            Some("14000000-0000-0000-0000-000000000000<&>")
        );
        assert_eq!(
            find(&doc, NS_ENUMERATION, "MaxElements").text(),
            Some("999")
        );
    }

    #[test]
    fn put_request_carries_selectors_and_instance() {
        let uri = amt_uri("AMT_TLSSettingData");
        let mut instance = Element {
            ns: uri.clone(),
            name: "AMT_TLSSettingData".into(),
            attrs: vec![],
            text: String::new(),
            children: vec![],
        };
        instance.set_property("ElementName", "Intel(r) AMT 802.3 TLS Settings");
        instance.set_property("Enabled", "true");
        let xml = put_request(
            &uri,
            3,
            &[("InstanceID", "Intel(r) AMT 802.3 TLS Settings & <more>")],
            &instance,
        );
        header_checks(&xml, &format!("{NS_TRANSFER}/Put"), &uri);
        let doc = parse(&xml);
        let selector = find(&doc, NS_WSMAN, "Selector");
        assert_eq!(selector.attribute("Name"), Some("InstanceID"));
        assert_eq!(
            selector.text(),
            Some("Intel(r) AMT 802.3 TLS Settings & <more>")
        );
        assert!(is(
            find(&doc, NS_WSMAN, "SelectorSet").parent().expect("p"),
            NS_SOAP,
            "Header"
        ));
        assert_eq!(find(&doc, &uri, "Enabled").text(), Some("true"));
        assert!(xml.contains(&format!(
            r#"<h:AMT_TLSSettingData xmlns:h="{uri}"><h:ElementName>"#
        )));
    }

    #[test]
    fn create_request_with_endpoint_references() {
        let uri = amt_uri("AMT_TLSCredentialContext");
        let body = format!(
            r#"<h:AMT_TLSCredentialContext xmlns:h="{uri}"><h:ElementInContext>{}</h:ElementInContext></h:AMT_TLSCredentialContext>"#,
            endpoint_reference(
                &amt_uri("AMT_PublicKeyCertificate"),
                &[("InstanceID", "Intel(r) AMT Certificate: Handle: 1")]
            )
        );
        let xml = create_request(&uri, 4, &body);
        header_checks(&xml, &format!("{NS_TRANSFER}/Create"), &uri);
        let doc = parse(&xml);
        let eic = find(&doc, &uri, "ElementInContext");
        let sel = eic
            .descendants()
            .find(|n| is(*n, NS_WSMAN, "Selector"))
            .expect("selector");
        assert_eq!(sel.text(), Some("Intel(r) AMT Certificate: Handle: 1"));
        assert!(eic.descendants().any(|n| is(n, NS_WSMAN, "ResourceURI")
            && n.text() == Some(amt_uri("AMT_PublicKeyCertificate").as_str())));
    }

    fn uuid_output(prefixes: [&str; 4], rv: u32) -> String {
        let uri = amt_uri("AMT_SetupAndConfigurationService");
        reply(
            prefixes,
            &format!(r#"xmlns:h="{uri}""#),
            &format!("{uri}/GetUuidResponse"),
            &format!(
                "<h:GetUuid_OUTPUT><h:UUID>E67jVdK/u2EXoIiu3XA36g==</h:UUID><h:ReturnValue>{rv}</h:ReturnValue></h:GetUuid_OUTPUT>"
            ),
        )
    }

    #[test]
    fn method_output_return_values() {
        let uri = amt_uri("AMT_SetupAndConfigurationService");
        let out = parse_method_output(&uuid_output(GWM, 0), &uri, "GetUuid").expect("ok");
        assert_eq!(out.property("UUID"), Some("E67jVdK/u2EXoIiu3XA36g=="));
        for (code, name) in [
            (1, "INTERNAL_ERROR"),
            (2057, "DATA_MISSING"),
            (4711, "UNKNOWN"),
        ] {
            let err = parse_method_output(&uuid_output(GWM, code), &uri, "GetUuid")
                .expect_err("non-zero");
            assert!(
                matches!(err, DeviceError::ReturnValue { method: "GetUuid", code: c, name: n } if c == code && n == name),
                "{err:?}"
            );
        }
        // Right local name in another namespace is not the output.
        let wrong_ns = parse_method_output(&uuid_output(GWM, 0), &amt_uri("Other"), "GetUuid");
        assert!(matches!(wrong_ns, Err(DeviceError::Malformed(_))));
        let no_rv = uuid_output(GWM, 0).replace("<h:ReturnValue>0</h:ReturnValue>", "");
        assert!(matches!(
            parse_method_output(&no_rv, &uri, "GetUuid"),
            Err(DeviceError::Malformed(_))
        ));
    }

    #[test]
    fn prefixes_do_not_matter() {
        let uri = amt_uri("AMT_SetupAndConfigurationService");
        let a = parse_method_output(&uuid_output(GWM, 0), &uri, "GetUuid").expect("a");
        let b = parse_method_output(
            &uuid_output(["env", "wsa", "wsman", "en"], 0),
            &uri,
            "GetUuid",
        )
        .expect("b");
        assert_eq!(a, b);
        // Default namespaces instead of prefixes.
        let default_ns = format!(
            r#"<Envelope xmlns="{NS_SOAP}"><Body><GetUuid_OUTPUT xmlns="{uri}"><UUID>E67jVdK/u2EXoIiu3XA36g==</UUID><ReturnValue>0</ReturnValue></GetUuid_OUTPUT></Body></Envelope>"#
        );
        let c = parse_method_output(&default_ns, &uri, "GetUuid").expect("c");
        assert_eq!(a, c);
        // Same local names under a wrong SOAP namespace are not accepted.
        let soap11 =
            uuid_output(GWM, 0).replace(NS_SOAP, "http://schemas.xmlsoap.org/soap/envelope/");
        assert!(matches!(
            parse_method_output(&soap11, &uri, "GetUuid"),
            Err(DeviceError::Malformed(_))
        ));
    }

    #[test]
    fn soap_fault() {
        let body = r#"<a:Fault><a:Code><a:Value>a:Sender</a:Value><a:Subcode><a:Value>b:DestinationUnreachable</a:Value></a:Subcode></a:Code><a:Reason><a:Text xml:lang="en-US">No route can be determined to reach the destination role defined by the WS-Addressing To.</a:Text></a:Reason><a:Detail></a:Detail></a:Fault>"#;
        let xml = reply(GWM, "", &format!("{NS_ADDRESSING}/fault"), body);
        let err = reply_body(&xml).expect_err("fault");
        match err {
            DeviceError::Fault {
                code,
                subcode,
                reason,
            } => {
                assert_eq!(code, "Sender");
                assert_eq!(subcode, "DestinationUnreachable");
                assert!(reason.starts_with("No route can be determined"));
            }
            other => panic!("{other:?}"),
        }
        assert!(fault_in(&xml).is_some());
        assert!(fault_in(&uuid_output(GWM, 0)).is_none());
        // A fault beats the expected element, and a partial fault still parses.
        let bare = reply(GWM, "", "x", "<a:Fault/>");
        assert!(matches!(
            parse_method_output(&bare, "urn:x", "GetUuid"),
            Err(DeviceError::Fault { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        for garbage in [
            "",
            "HTTP/1.1 200 OK",
            "<html><body>Intel AMT</body></html>",
            "<a:Envelope xmlns:a=\"http://www.w3.org/2003/05/soap-envelope\"><a:Body>",
            "<a:Envelope xmlns:a=\"http://www.w3.org/2003/05/soap-envelope\"/>",
            "\u{0}\u{1}binary",
            "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><x>&a;</x>",
        ] {
            assert!(
                matches!(reply_body(garbage), Err(DeviceError::Malformed(_))),
                "{garbage:?}"
            );
        }
        let deep = format!(
            "<a:Envelope xmlns:a=\"{NS_SOAP}\"><a:Body>{}{}</a:Body></a:Envelope>",
            "<x>".repeat(100),
            "</x>".repeat(100)
        );
        assert!(matches!(reply_body(&deep), Err(DeviceError::Malformed(_))));
    }

    /// A hostile device's reply nested far deeper than a thread's stack could parse
    /// recursively is refused before any tree is built (it used to abort the server).
    #[test]
    fn a_reply_nested_beyond_any_stack_is_refused_without_a_tree() {
        let levels = 200_000;
        let deep = format!(
            "<a:Envelope xmlns:a=\"{NS_SOAP}\"><a:Body>{}{}</a:Body></a:Envelope>",
            "<x>".repeat(levels),
            "</x>".repeat(levels)
        );
        // A small stack, like a busy tokio worker's remaining one.
        let outcome = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || matches!(reply_body(&deep), Err(DeviceError::Malformed(_))))
            .unwrap()
            .join()
            .unwrap();
        assert!(outcome);
        // Wide instead of deep: more elements than a job may keep from one reply.
        let wide = format!(
            "<a:Envelope xmlns:a=\"{NS_SOAP}\"><a:Body>{}</a:Body></a:Envelope>",
            "<x/>".repeat(MAX_ELEMENTS + 1)
        );
        assert!(matches!(reply_body(&wide), Err(DeviceError::Malformed(m)) if m.contains("4096")));
        // Unclosed nesting too (no end tags at all).
        let open_only = format!(
            "<a:Envelope xmlns:a=\"{NS_SOAP}\"><a:Body>{}",
            "<x>".repeat(levels)
        );
        assert!(matches!(
            reply_body(&open_only),
            Err(DeviceError::Malformed(_))
        ));
    }

    #[test]
    fn enumerate_and_pull_responses() {
        let xml = reply(
            GWM,
            "",
            &format!("{NS_ENUMERATION}/EnumerateResponse"),
            "<g:EnumerateResponse><g:EnumerationContext>14000000-0000-0000-0000-000000000000</g:EnumerationContext></g:EnumerateResponse>",
        );
        assert_eq!(
            parse_enumerate_response(&xml).expect("ctx"),
            "14000000-0000-0000-0000-000000000000"
        );
        let page = |tail: &str| {
            reply(
                GWM,
                r#"xmlns:h="urn:item""#,
                &format!("{NS_ENUMERATION}/PullResponse"),
                &format!("<g:PullResponse><g:Items><h:I><h:V>1</h:V></h:I><h:I><h:V>2</h:V></h:I></g:Items>{tail}</g:PullResponse>"),
            )
        };
        let last = parse_pull_response(&page("<g:EndOfSequence/>")).expect("pull");
        assert_eq!(last.items.len(), 2);
        assert_eq!(last.items[1].property("V"), Some("2"));
        assert!(last.next.is_none());
        let more = parse_pull_response(&page("<g:EnumerationContext>ctx2</g:EnumerationContext>"))
            .expect("pull");
        assert_eq!(more.next.as_deref(), Some("ctx2"));
    }

    #[test]
    fn element_round_trip_declares_foreign_namespaces() {
        let xml = reply(
            GWM,
            r#"xmlns:h="urn:cls""#,
            "x",
            r#"<h:C><h:A>1 &amp; 2</h:A><h:N xsi:nil="true"/><h:R><b:Address>/wsman</b:Address><z xmlns="">plain</z></h:R></h:C>"#,
        );
        let original = reply_body(&xml).expect("body").remove(0);
        let text = original.to_xml();
        assert!(text.starts_with(r#"<h:C xmlns:h="urn:cls"><h:A>1 &amp; 2</h:A>"#));
        let wrapped =
            format!(r#"<s:Envelope xmlns:s="{NS_SOAP}"><s:Body>{text}</s:Body></s:Envelope>"#);
        let again = reply_body(&wrapped).expect("reparse").remove(0);
        assert_eq!(original, again);
    }
}
