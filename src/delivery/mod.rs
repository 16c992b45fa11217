//! Delivery: matching, signing, retry decisions, dispatchers and the status they report.

pub mod backoff;
pub mod matching;
pub mod signing;
