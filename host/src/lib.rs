//! wasmhive: a host for serverless microservices written as WebAssembly components.
//!
//! Module map (arrows point at what a module may use):
//!
//! ```text
//! cli ──► host ──► control ──► apps ──► scaler ──► runtime ──► (wasmtime)
//!                    │  │        ▲                    │
//!                    │  ▼        │                    ▼
//!                    │ subscriber┤                   bus (nats | local)
//!                    ▼           │
//!                 gateway ───────┘
//! manifest, routes, config, body, listener, telemetry: shared leaves
//! ```
//!
//! - [`runtime`]: engine, compile cache, linker, per-instance state, invocation.
//! - [`apps`]: the deployed apps and the live route table (atomic snapshots).
//! - [`mesh`]: calls between components by name, with timeout, retry, breaker, fallback.
//! - [`bus`]: the message bus trait, NATS and in-process backends, managed nats-server.
//! - [`subscriber`]: message triggers (subscriptions → scaler → runtime).
//! - [`scaler`]: per-component admission (bulkhead, queue, shedding) and scale to zero.
//! - [`control`]: deploy/undeploy/status, the admin API and its client.
//! - [`gateway`]: the public HTTP listener and status-code mapping.
//! - [`manifest`]: app manifests, format version 1.
//! - [`host`]: the composition root that wires a host together.

#![deny(missing_docs)]

pub mod apps;
pub mod body;
pub mod bus;
pub mod cli;
pub mod config;
pub mod control;
pub mod gateway;
pub mod host;
pub mod listener;
pub mod manifest;
pub mod mesh;
pub mod routes;
pub mod runtime;
pub mod scaler;
pub mod state;
pub mod subscriber;
pub mod telemetry;
pub mod validate;
