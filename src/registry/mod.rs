//! The registry: prefix allocation, certificate issuance, signed network
//! configuration, over HTTP and SQLite.
//!
//! - [`allocator`]: the binary tree of free prefix blocks (pure);
//! - [`community`]: the community file (location → sub-prefix);
//! - [`auth`]: node request signing and verification (shared with the node);
//! - [`config`]: the CA-signed network configuration;
//! - [`store`]: the SQLite database, one transaction per mutation;
//! - [`mail`]: token delivery by SMTP or to an mbox file;
//! - [`api`]: the JSON bodies;
//! - [`server`]: the axum HTTP server;
//! - [`client`]: the typed async client.
//!
//! `docs/registry-api.md` documents the HTTP API.

pub mod allocator;
pub mod api;
pub mod auth;
pub mod client;
pub mod community;
pub mod config;
pub mod mail;
pub mod server;
pub mod store;

pub use client::{ClientError, NodeAuth, RegistryClient};
pub use config::{BabelKeys, NetworkConfig, SignedConfig};
