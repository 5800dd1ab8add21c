//! What the network namespace looks like: interface addresses, default gateways, whether IPv6
//! exists, and signs that this is the host's namespace rather than a container's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetInfo {
    /// Addresses with their on-link prefix, loopback excluded.
    pub addrs: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
    /// The kernel has IPv6 (ip6tables must then be loaded too).
    pub ipv6_kernel: bool,
    /// Some non-loopback IPv6 route exists, so IPv6 probes reach the fence.
    pub ipv6_routed: bool,
}

impl NetInfo {
    pub fn read() -> NetInfo {
        let mut info = NetInfo {
            ipv6_kernel: Path::new("/proc/net/if_inet6").exists(),
            ..NetInfo::default()
        };
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for ifaddr in addrs {
                if ifaddr.interface_name == "lo" {
                    continue;
                }
                let (Some(addr), Some(mask)) = (ifaddr.address, ifaddr.netmask) else {
                    continue;
                };
                let net = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in())
                {
                    IpNet::with_netmask(IpAddr::V4(a.ip()), IpAddr::V4(m.ip())).ok()
                } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6())
                {
                    IpNet::with_netmask(IpAddr::V6(a.ip()), IpAddr::V6(m.ip())).ok()
                } else {
                    None
                };
                info.addrs.extend(net);
            }
        }
        if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
            info.gateways.extend(parse_route_v4(&text));
        }
        if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
            let routes = parse_route_v6(&text);
            info.ipv6_routed = routes.routed;
            info.gateways.extend(routes.gateways);
        }
        info
    }

    /// Whether a connection to `addr` gets past routing (so a fence verdict can be observed).
    pub fn routes(&self, addr: IpAddr) -> bool {
        let has_default = self.gateways.iter().any(|g| g.is_ipv4() == addr.is_ipv4());
        let on_link = self.addrs.iter().any(|net| net.contains(&addr));
        match addr {
            IpAddr::V4(_) => has_default || on_link,
            IpAddr::V6(_) => has_default || on_link || (self.ipv6_routed && self.ipv6_default()),
        }
    }

    fn ipv6_default(&self) -> bool {
        self.gateways.iter().any(|g| g.is_ipv6())
    }
}

/// Default gateways from /proc/net/route (hex, little-endian).
pub fn parse_route_v4(text: &str) -> Vec<IpAddr> {
    let mut gateways = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || fields[1] != "00000000" || fields[7] != "00000000" {
            continue;
        }
        if let Ok(raw) = u32::from_str_radix(fields[2], 16) {
            let gateway = Ipv4Addr::from(raw.swap_bytes());
            if !gateway.is_unspecified() && !gateways.contains(&IpAddr::V4(gateway)) {
                gateways.push(IpAddr::V4(gateway));
            }
        }
    }
    gateways
}

pub struct V6Routes {
    pub gateways: Vec<IpAddr>,
    /// A usable route other than loopback's and link-local/multicast ones.
    pub routed: bool,
}

/// /proc/net/ipv6_route: dest, dest_len, src, src_len, next_hop, metric, refcnt, use, flags, dev.
pub fn parse_route_v6(text: &str) -> V6Routes {
    const RTF_REJECT: u32 = 0x0200;
    let mut routes = V6Routes {
        gateways: Vec::new(),
        routed: false,
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 || fields[9] == "lo" {
            continue;
        }
        let flags = u32::from_str_radix(fields[8], 16).unwrap_or(RTF_REJECT);
        let (Some(dest), Some(next_hop)) = (hex_v6(fields[0]), hex_v6(fields[4])) else {
            continue;
        };
        if flags & RTF_REJECT != 0 {
            continue;
        }
        let local_scope = (dest.segments()[0] & 0xffc0) == 0xfe80 || dest.is_multicast();
        if !local_scope {
            routes.routed = true;
        }
        if fields[1] == "00" && !next_hop.is_unspecified() {
            routes.gateways.push(IpAddr::V6(next_hop));
        }
    }
    routes
}

fn hex_v6(text: &str) -> Option<Ipv6Addr> {
    u128::from_str_radix(text, 16).ok().map(Ipv6Addr::from)
}

/// Network devices that a container's own namespace never has: bridges (docker0, br-…) and
/// devices backed by hardware. Their presence means this is (most likely) the host's namespace.
pub fn host_namespace_devices(sys_class_net: &Path) -> Vec<String> {
    let Ok(listing) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut found: Vec<String> = listing
        .flatten()
        .filter(|dev| dev.path().join("bridge").is_dir() || dev.path().join("device").exists())
        .map(|dev| dev.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_v4() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            parse_route_v4(text),
            ["172.18.0.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn default_gateway_v6_and_reachability() {
        let text = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
             fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        let routes = parse_route_v6(text);
        assert_eq!(routes.gateways, ["fd00::1".parse::<IpAddr>().unwrap()]);
        assert!(routes.routed);

        let link_local_only = "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000004 00000000 00000001     eth0\n";
        let routes = parse_route_v6(link_local_only);
        assert!(!routes.routed && routes.gateways.is_empty());
    }
}
