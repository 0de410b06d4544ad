//! weft-agent: turns the controller's tables into this host's kernel datapath.
//!
//! - [`agent`] puts the parts together; [`controller_link`] is the link to the controller;
//! - [`watch`] follows the controller (snapshot, then deltas) into the copy of its tables
//!   ([`tables`]), never to another store or back in time ([`following`]);
//! - [`desired`] computes the kernel state the tables call for, and the diff to the current one;
//! - [`reconcile`] runs the loop that applies it whenever something changed;
//! - [`probe`] checks the data path to every peer through the VXLAN path itself;
//! - [`datapath`] applies it (bridge, VXLAN, veths, FDB) through [`netlink`], entering container
//!   namespaces with [`netns`], diffing FDB and neighbour entries against [`held`] (kept true by
//!   the kernel's notifications); [`firewall`] keeps the nftables table `weft` (masquerading);
//! - [`endpoints`] is the core every front end changes endpoints through: attach, detach,
//!   expose, hide, releases, DNS names, each container's turn;
//! - [`local_api`] serves weftctl through the core, with what it shows of the tables in
//!   [`views`];
//!   [`container`] resolves its CONTAINER references, Docker/Podman ones through [`docker`];
//! - [`cni`] is the CNI plugin's front end (ADD, DEL, CHECK, GC) on the same API and core;
//! - [`docker_watch`] releases the endpoints of Docker containers that stop or are removed;
//! - [`dns`] serves containers' names to the containers of this host;
//! - [`health`] answers `/healthz` and `/metrics`, the latter from [`metrics`].
//! - [`heap`] keeps the agent's heap small (one malloc arena, freed memory handed back).

pub mod agent;
pub mod cni;
pub mod cni_namespaces;
pub mod container;
pub mod controller_link;
pub mod datapath;
pub mod desired;
pub mod dns;
pub mod docker;
pub mod docker_plugin;
pub mod docker_watch;
pub mod endpoints;
pub mod firewall;
pub mod following;
pub mod health;
pub mod heap;
pub mod held;
pub mod join;
pub mod local_api;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod probe;
pub mod reconcile;
pub mod state_file;
pub mod tables;
pub mod views;
pub mod watch;
pub mod wireguard;
