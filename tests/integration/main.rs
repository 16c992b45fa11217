//! Hookline's integration tests, one binary: each module is a suite that runs the real `hookline`
//! binary against the shared local control plane (`hack/cluster.sh up`), PostgreSQL
//! (`hack/postgres.sh up`) and, for `node`, the real node. One binary links the harness and the
//! crate once instead of once per suite. Run one suite with `cargo test --test integration node::`.

mod support;

mod api_outage;
mod argocd_health;
mod backlog;
mod catalog;
mod cel_rules;
mod cel_server;
mod chart;
mod connections;
mod control_plane;
mod dead_letters;
mod delivery;
mod endpoint_health;
mod image;
mod ingest;
mod monitoring;
mod node;
mod openapi;
mod reliability;
mod replicas;
mod subscription;
mod traces;
mod verification;
