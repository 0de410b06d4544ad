//! The result of an ADD in the version the runtime asked for: the host veth, the container's
//! interface (with its sandbox), the addresses with their gateway, the routes and weft's DNS.

use serde_json::{Value, json};
use weft_proto::v1::CniAddResponse;

/// The result as the spec's version `cni_version` writes it: 0.3.x and 0.4.0 give each IP its
/// `version`; 1.1.0 gives interfaces their MTU.
pub fn add_result(cni_version: &str, done: &CniAddResponse, ifname: &str, netns: &str) -> Value {
    let old = cni_version.starts_with("0.");
    let mut host = json!({"name": done.host_ifname});
    // The agent names no MAC for a veth it could not find just then: the key is optional.
    if !done.host_mac.is_empty() {
        host["mac"] = done.host_mac.clone().into();
    }
    let mut container = json!({"name": ifname, "mac": done.container_mac, "sandbox": netns});
    if cni_version == "1.1.0" {
        host["mtu"] = done.mtu.into();
        container["mtu"] = done.mtu.into();
    }
    let ips: Vec<Value> = done
        .cidrs
        .iter()
        .map(|cidr| {
            let mut ip = json!({"address": cidr, "interface": 1});
            // The gateway (IPv4) belongs to the addresses of its family only.
            if !done.gateway.is_empty() && cidr.contains(':') == done.gateway.contains(':') {
                ip["gateway"] = done.gateway.clone().into();
            }
            if old {
                ip["version"] = if cidr.contains(':') { "6" } else { "4" }.into();
            }
            ip
        })
        .collect();
    let routes: Vec<Value> = done
        .routes
        .iter()
        .map(|r| match r.gw.as_str() {
            "" => json!({"dst": r.dst}),
            gw => json!({"dst": r.dst, "gw": gw}),
        })
        .collect();
    json!({
        "cniVersion": cni_version,
        "interfaces": [host, container],
        "ips": ips,
        "routes": routes,
        "dns": {
            "nameservers": [done.dns_server],
            "domain": done.dns_domain,
            "search": [done.dns_domain],
        },
    })
}

#[cfg(test)]
mod tests {
    use weft_proto::v1::CniRoute;

    use super::*;

    #[test]
    fn each_version_has_its_form() {
        let done = CniAddResponse {
            host_ifname: "vethwepl0090005".into(),
            host_mac: "ae:11:22:33:44:55".into(),
            container_mac: "0a:77:0a:09:00:05".into(),
            cidrs: vec!["10.9.0.5/24".into()],
            gateway: "10.9.0.1".into(),
            routes: vec![
                CniRoute {
                    dst: "10.9.0.0/24".into(),
                    gw: String::new(),
                },
                CniRoute {
                    dst: "0.0.0.0/0".into(),
                    gw: "10.9.0.1".into(),
                },
            ],
            mtu: 1450,
            dns_server: "127.0.0.11".into(),
            dns_domain: "weave.local".into(),
        };
        let r = add_result("1.0.0", &done, "eth0", "/run/netns/p1");
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "vethwepl0090005", "mac": "ae:11:22:33:44:55"},
                    {"name": "eth0", "mac": "0a:77:0a:09:00:05", "sandbox": "/run/netns/p1"}
                ],
                "ips": [{"address": "10.9.0.5/24", "gateway": "10.9.0.1", "interface": 1}],
                "routes": [{"dst": "10.9.0.0/24"}, {"dst": "0.0.0.0/0", "gw": "10.9.0.1"}],
                "dns": {"nameservers": ["127.0.0.11"], "domain": "weave.local",
                        "search": ["weave.local"]}
            })
        );
        let r = add_result("0.4.0", &done, "eth0", "/run/netns/p1");
        assert_eq!(r["ips"][0]["version"], "4");
        let r = add_result("1.1.0", &done, "eth0", "/run/netns/p1");
        assert_eq!(r["interfaces"][1]["mtu"], 1450);
        assert!(r["ips"][0].get("version").is_none());
        // Dual stack: both addresses, the IPv4 gateway on the IPv4 one only.
        let dual = CniAddResponse {
            cidrs: vec!["10.9.0.5/24".into(), "fd00:9::5/64".into()],
            ..done
        };
        let r = add_result("0.4.0", &dual, "eth0", "/run/netns/p1");
        assert_eq!(
            r["ips"],
            json!([
                {"address": "10.9.0.5/24", "gateway": "10.9.0.1", "interface": 1, "version": "4"},
                {"address": "fd00:9::5/64", "interface": 1, "version": "6"}
            ])
        );
    }
}
