//! weft-controller: the authority for peers, networks, endpoints and addresses ([`ipam`]). It
//! keeps them in memory ([`rules`]), durable in redb or etcd ([`store`], copied by [`backup`];
//! on etcd it follows the other controllers' commits, `follow`, knows them and their agents,
//! [`members`], and hands its agents over when it cannot reach etcd, `reach`), and serves them
//! to agents over gRPC ([`service`]), its health and [`metrics`] over HTTP.

pub mod authority;
pub mod backup;
pub mod enrollment;
pub mod failpoint;
mod follow;
pub mod health;
pub mod index;
pub mod ipam;
pub mod limits;
pub mod liveness;
pub mod members;
pub mod metrics;
mod reach;
pub mod rules;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokens;
