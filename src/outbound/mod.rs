//! Outbound: everything a request to a subscriber's endpoint needs, for deliveries and handshakes
//! alike. The SSRF-guarded resolver, HTTP clients per CA bundle, signing keys and secret headers
//! read from Secrets, the signed webhook request, and bounded, secret-free reading of answers.

pub mod clients;
pub mod http;
pub mod secrets;
pub mod signing;
pub mod ssrf;
pub mod webhook;
