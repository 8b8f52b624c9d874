//! The stable plugin ABI between the vprov core and its dynamically loaded plugins.
//!
//! Plugins (key export formats, alert sinks, post-provision actions) arrive with the
//! plugin SDK work; until then this crate intentionally has no items, so that nothing
//! is published as an ABI before it is designed. See `ARCHITECTURE.md`.
