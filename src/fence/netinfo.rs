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
    pub ipv6: Ipv6,
}

/// What IPv6 can do in this namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ipv6 {
    /// The kernel has no IPv6 (booted with ipv6.disable=1): there is nothing to fence.
    Absent,
    /// The kernel has IPv6 but no interface of this namespace, loopback included, has an IPv6
    /// address: Docker's ordinary networks (`disable_ipv6=1` everywhere). Nothing can be sent
    /// (EADDRNOTAVAIL); ip6tables still works, and cordon loads its rules anyway.
    Off,
    #[default]
    On,
}

impl Ipv6 {
    /// Reads /proc/net/if_inet6, which lists every IPv6 address of the namespace.
    fn read() -> Ipv6 {
        match std::fs::read_to_string("/proc/net/if_inet6") {
            Err(_) => Ipv6::Absent,
            Ok(text) if text.trim().is_empty() => Ipv6::Off,
            Ok(_) => Ipv6::On,
        }
    }

    /// Whether ip6tables exists to be loaded.
    pub fn in_kernel(self) -> bool {
        self != Ipv6::Absent
    }
}

impl NetInfo {
    pub fn read() -> NetInfo {
        let mut info = NetInfo {
            ipv6: Ipv6::read(),
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
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
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
///
/// Inside a VM-isolated runtime (Kata Containers) the container's own interface is a virtio NIC,
/// like the NIC of most cloud VMs' host namespace: virtio counts as hardware unless `in_kata`
/// (see `in_kata_guest`).
pub fn host_namespace_devices(
    proc_net_dev: &Path,
    sys_class_net: &Path,
    in_kata: bool,
) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(proc_net_dev) else {
        return Vec::new();
    };
    let mut found: Vec<String> = text
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next().map(str::trim))
        .filter(|name| {
            let dev = sys_class_net.join(name);
            dev.join("bridge").is_dir()
                || (dev.join("device").exists() && !(in_kata && is_virtio(&dev)))
        })
        .map(str::to_string)
        .collect();
    found.sort();
    found
}

/// Whether this is a container inside a Kata Containers VM: Kata shares the container's files
/// into the guest over virtio-fs (or 9p) under the mount tag `kataShared`, which mountinfo shows
/// as the source of those mounts.
pub fn in_kata_guest(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        line.split_once(" - ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            == Some("kataShared")
    })
}

/// Whether the device sits on the virtio bus (its `device/subsystem` link ends in `virtio`).
fn is_virtio(dev: &Path) -> bool {
    std::fs::read_link(dev.join("device/subsystem"))
        .is_ok_and(|bus| bus.file_name().is_some_and(|name| name == "virtio"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/net/dev and a sysfs class/net tree with the given devices: (name, bridge, bus).
    fn fake_namespace(devices: &[(&str, bool, Option<&str>)]) -> std::path::PathBuf {
        use std::os::unix::fs::symlink;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("cordon-netinfo-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut dev = String::from("Inter-|   Receive\n face |bytes\n");
        for (name, bridge, bus) in devices {
            dev.push_str(&format!("{name:>6}: 0 0 0 0\n"));
            let class = root.join("class").join(name);
            std::fs::create_dir_all(&class).unwrap();
            if *bridge {
                std::fs::create_dir(class.join("bridge")).unwrap();
            }
            if let Some(bus) = bus {
                let device = root.join("devices").join(name);
                std::fs::create_dir_all(&device).unwrap();
                std::fs::create_dir_all(root.join("bus").join(bus)).unwrap();
                symlink(root.join("bus").join(bus), device.join("subsystem")).unwrap();
                symlink(&device, class.join("device")).unwrap();
            }
        }
        std::fs::write(root.join("dev"), dev).unwrap();
        root
    }

    #[test]
    fn bridges_and_hardware_mean_the_host_a_virtio_nic_does_not() {
        let host = fake_namespace(&[
            ("lo", false, None),
            ("eth0", false, Some("pci")),
            ("docker0", true, None),
            ("veth1", false, None),
        ]);
        assert_eq!(
            host_namespace_devices(&host.join("dev"), &host.join("class"), false),
            ["docker0", "eth0"]
        );
        // Kata: the container's own interface is a virtio NIC.
        let kata = fake_namespace(&[("lo", false, None), ("eth0", false, Some("virtio"))]);
        assert!(host_namespace_devices(&kata.join("dev"), &kata.join("class"), true).is_empty());
        // The same NIC without Kata's signs: the host namespace of a KVM cloud VM.
        assert_eq!(
            host_namespace_devices(&kata.join("dev"), &kata.join("class"), false),
            ["eth0"]
        );
        // Inside Kata a bridge still counts.
        let bridged = fake_namespace(&[("eth0", false, Some("virtio")), ("docker0", true, None)]);
        assert_eq!(
            host_namespace_devices(&bridged.join("dev"), &bridged.join("class"), true),
            ["docker0"]
        );
        for root in [host, kata, bridged] {
            let _ = std::fs::remove_dir_all(root);
        }
    }

    #[test]
    fn kata_is_recognised_by_its_shared_filesystem() {
        let kata = "1 0 0:30 /containers/abc/rootfs / rw,relatime - virtiofs kataShared rw\n\
                    2 1 0:5 / /proc rw,nosuid - proc proc rw\n";
        assert!(in_kata_guest(kata));
        let docker = "1 0 0:30 / / rw,relatime - overlay overlay rw,lowerdir=/a\n\
                      2 1 0:5 / /proc rw,nosuid - proc proc rw\n";
        assert!(!in_kata_guest(docker));
        // The tag only counts as the mount's source, not in a path or an option.
        let lookalike = "1 0 0:30 /kataShared / rw - ext4 /dev/vda1 rw,kataShared\n";
        assert!(!in_kata_guest(lookalike));
    }

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
