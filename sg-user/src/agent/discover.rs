//! Address discovery for interfaces that declare none: the addresses the
//! kernel has on the interface, read inside its network namespace.

use std::{ffi::CStr, net::IpAddr};

use crate::{
    model::{AddressSource, Interface},
    sys::netns::in_netns,
};

/// Reads interface addresses with getifaddrs(3), inside the namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelAddresses;

impl AddressSource for KernelAddresses {
    fn addresses(&self, iface: &Interface) -> Option<Vec<IpAddr>> {
        in_netns(iface.netns.as_deref(), || interface_addresses(&iface.name))
            .ok()
            .flatten()
    }
}

/// The IPv4 and IPv6 addresses of `name` here (IPv6 link-local excluded:
/// peers never reach a security group rule through them). `None` when the
/// interface does not exist.
pub fn interface_addresses(name: &str) -> Option<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = false;
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string.
        if unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() != name.as_bytes() {
            continue;
        }
        found = true;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: the family says which sockaddr this is.
        unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let addr = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
                    if addr.segments()[0] & 0xffc0 != 0xfe80 {
                        out.push(IpAddr::V6(addr));
                    }
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    found.then(|| {
        out.sort();
        out.dedup();
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_addresses_and_missing_interfaces_have_none() {
        let lo = interface_addresses("lo").expect("lo exists");
        assert!(lo.contains(&IpAddr::from([127, 0, 0, 1])), "{lo:?}");
        assert_eq!(interface_addresses("sgnonexistent0"), None);
    }
}
