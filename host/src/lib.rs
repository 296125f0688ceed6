//! wasmhive: a host for serverless microservices written as WebAssembly components.
//!
//! Module map (arrows point at what a module may use; docs/adr/0011 has the seams):
//!
//! ```text
//! cli ─► host ─► control ─┬─► gateway ─┐
//!                 │       ├─► mesh ────┼─► envelope ─► apps ─► scaler ─► runtime ─► capability
//!                 │       └─► subscriber┘      │        │  └─► auth         │            │
//!                 ├─► validate                 ▼        ▼                   ▼            ▼
//!                 └─► bus, state            trigger ◄─ manifest       (wasmtime)    bus, state
//!
//! leaves: section (manifest tables, errors), ids, headers, routes, body, listener,
//!         tls, limit, config, telemetry
//! ```
//!
//! - [`capability`]: what a guest may import, one module per capability (WIT
//!   interfaces, manifest keys, grant, per-instance state, linker), assembled from one
//!   list.
//! - [`trigger`]: what starts an invocation, one module per trigger (manifest keys,
//!   the export it needs, its label), assembled from one list.
//! - [`envelope`]: the one invocation envelope every trigger's source uses:
//!   admission, wake from zero, counters, the call, the failure table, metrics, trace.
//! - [`runtime`]: engines, compile cache, linker, instances (fresh or reused), calls.
//! - [`manifest`]: app manifests, format version 1, read once into the host's types.
//! - [`apps`]: the deployed apps and the live route table (atomic snapshots).
//! - [`scaler`]: per-component admission (bulkhead, queue, shedding) and scale to zero.
//! - [`gateway`], [`mesh`], [`subscriber`], [`jobs`]: the sources of HTTP,
//!   service-call, message and job invocations.
//! - [`bus`]: the message bus trait, NATS and in-process backends, managed nats-server.
//! - [`state`]: key-value backends (redb, JetStream).
//! - [`control`]: deploy/undeploy/status, the admin API (locked by its token) and its
//!   client.
//! - [`auth`]: who is calling (JWTs, API keys) and whether they may call a route;
//!   [`limit`]: rate limits; [`listener`]: connections (clocks, limits, h2c) and
//!   [`tls`]: certificates that reload.
//! - [`host`]: the composition root that wires a host together.

#![deny(missing_docs)]

pub mod apps;
pub mod auth;
pub mod body;
pub mod bus;
pub mod capability;
pub mod cli;
pub mod config;
pub mod control;
pub mod envelope;
pub mod gateway;
pub mod headers;
pub mod host;
pub mod ids;
pub mod jobs;
pub mod lattice;
pub mod limit;
pub mod listener;
pub mod manifest;
pub mod mesh;
pub mod routes;
pub mod runtime;
pub mod scaler;
pub mod section;
pub mod state;
pub mod subscriber;
pub mod telemetry;
pub mod tls;
pub mod trigger;
pub mod validate;
