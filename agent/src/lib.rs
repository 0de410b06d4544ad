//! weft-agent: turns the controller's tables into this host's kernel datapath.
//!
//! - [`watch`] follows the controller (snapshot, then deltas) into [`agent::Agent`]'s tables,
//!   never to another store or back in time ([`following`]);
//! - [`desired`] computes the kernel state the tables call for, and the diff to the current one;
//! - [`reconcile`] runs the loop that applies it whenever something changed;
//! - [`datapath`] applies it (bridge, VXLAN, veths, FDB) through [`netlink`], entering container
//!   namespaces with [`netns`];
//! - [`local_api`] serves weftctl, with the steps of its commands in [`changes`] and what it
//!   shows of the tables in [`views`];
//!   [`container`] resolves its CONTAINER references, Docker/Podman ones through [`docker`];
//! - [`docker_watch`] releases the endpoints of Docker containers that stop or are removed;
//! - [`dns`] serves containers' names to the containers of this host;
//! - [`health`] answers `/healthz`.

pub mod agent;
pub mod changes;
pub mod container;
pub mod datapath;
pub mod desired;
pub mod dns;
pub mod docker;
pub mod docker_watch;
pub mod following;
pub mod health;
pub mod join;
pub mod local_api;
pub mod netlink;
pub mod netns;
pub mod reconcile;
pub mod views;
pub mod watch;
