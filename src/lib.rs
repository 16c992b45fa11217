#![doc = "Hookline: a Kubernetes operator that delivers webhooks."]
#![warn(missing_docs)]

pub mod api;
pub mod catalog;
pub mod cluster;
pub mod cluster_tasks;
pub mod controller;
pub mod deadletter;
pub mod delivery;
pub mod event;
pub mod ingest;
pub mod k8s;
pub mod metrics;
pub mod outbound;
pub mod ownership;
pub mod policy;
pub mod publisher;
pub mod registry;
pub mod report;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod verify;
