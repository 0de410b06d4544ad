//! weft-controller: the authority for peers, networks, endpoints and addresses ([`ipam`]). It
//! keeps them in memory
//! ([`rules`]), durable in redb ([`store`], copied by [`backup`]), and serves them to agents
//! over gRPC ([`service`]).

pub mod authority;
pub mod backup;
pub mod enrollment;
pub mod failpoint;
pub mod index;
pub mod ipam;
pub mod limits;
pub mod liveness;
pub mod rules;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokens;
