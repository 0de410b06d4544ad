//! weft's wire protocol: the gRPC messages and services shared by the controller, the agent and
//! weftctl (generated from `proto/weft.proto`), and the address syntax they exchange as strings.

pub mod addr;
pub mod dns_name;
pub mod error;
pub mod names;
pub mod rows;
pub mod snapshot;
pub mod subnet;
pub mod tables;
pub mod wireguard;

/// Generated from `proto/weft.proto`, package `weft.v1`.
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
