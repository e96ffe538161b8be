//! Berth: an OCI Distribution v1.1 registry (`berth serve`) and the Kubernetes operator that
//! deploys it (`berth operator`). `main.rs` only parses arguments and calls in here.

pub mod config;
pub mod gc;
pub mod keys;
pub mod listen;
pub mod mirror;
pub mod oci;
pub mod operator;
pub mod policy;
pub mod proxy;
pub mod purge;
pub mod registry;
pub mod repo;
pub mod serve;
pub mod store;
pub mod tls;
