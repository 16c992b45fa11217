//! Policy: what a subscription's spec means, as values in and values out. Spec limits and the
//! controller's check, the parsed retry schedule and backoff, event-type matching, and the
//! decisions behind the status conditions. Nothing here does IO.

pub mod decision;
pub mod filter;
pub mod matching;
pub mod retry;
pub mod spec;
