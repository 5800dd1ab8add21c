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
            info.gateways.extend(parse_route_v6(&text));
        }
        info
    }

    /// Whether this namespace has an IPv6 address beyond link-local ones (so AAAA answers can be
    /// used at all).
    pub fn has_ipv6_address(&self) -> bool {
        self.addrs.iter().any(|net| match net.addr() {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => false,
        })
    }

    /// Whether a connection to `addr` gets past routing, so the fence gives the verdict.
    pub fn routes(&self, addr: IpAddr) -> bool {
        addr.is_loopback()
            || self.gateways.iter().any(|g| g.is_ipv4() == addr.is_ipv4())
            || self.addrs.iter().any(|net| net.contains(&addr))
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

/// Default gateways from /proc/net/ipv6_route: dest, dest_len, src, src_len, next_hop, metric,
/// refcnt, use, flags, dev.
pub fn parse_route_v6(text: &str) -> Vec<IpAddr> {
    const RTF_REJECT: u32 = 0x0200;
    let mut gateways = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 || fields[9] == "lo" || fields[1] != "00" {
            continue;
        }
        let flags = u32::from_str_radix(fields[8], 16).unwrap_or(RTF_REJECT);
        if flags & RTF_REJECT != 0 {
            continue;
        }
        if let Some(next_hop) = hex_v6(fields[4]).filter(|hop| !hop.is_unspecified()) {
            gateways.push(IpAddr::V6(next_hop));
        }
    }
    gateways
}

fn hex_v6(text: &str) -> Option<Ipv6Addr> {
    u128::from_str_radix(text, 16).ok().map(Ipv6Addr::from)
}

/// Network devices that a container's own namespace never has: bridges (docker0, br-…) and
/// devices backed by hardware. Their presence means this is (most likely) the host's namespace.
/// Names come from /proc/net/dev, which always shows this namespace; sysfs only says what each
/// is (a sysfs mounted for another namespace may list devices that are not here).
pub fn host_namespace_devices(proc_net_dev: &Path, sys_class_net: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(proc_net_dev) else {
        return Vec::new();
    };
    let mut found: Vec<String> = text
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next().map(str::trim))
        .filter(|name| {
            let dev = sys_class_net.join(name);
            dev.join("bridge").is_dir() || dev.join("device").exists()
        })
        .map(str::to_string)
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
    fn default_gateway_v6() {
        let text = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
             fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(parse_route_v6(text), ["fd00::1".parse::<IpAddr>().unwrap()]);

        let link_local_only = "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000004 00000000 00000001     eth0\n";
        assert!(parse_route_v6(link_local_only).is_empty());
    }
}
