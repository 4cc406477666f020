//! What kind of device an interface is, to choose its ingress hook: native
//! XDP on physical NICs (drops before an skb exists), TC on veth and other
//! virtual devices (native XDP on veth splits GSO batches and costs more than
//! it saves). Must be called inside the interface's network namespace.

use std::{ffi::CString, io};

/// Driver facts from the ethtool GDRVINFO ioctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    pub driver: String,
    /// PCI (or other bus) address; empty for virtual devices.
    pub bus_info: String,
}

impl DriverInfo {
    /// A device on a real bus (a NIC), as opposed to veth, bridge, tun, lo …
    pub fn is_physical(&self) -> bool {
        !self.bus_info.is_empty() && self.driver != "veth"
    }
}

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

fn c_field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Reads the driver name and bus address of `iface`. Devices without ethtool
/// support (loopback, some virtual ones) return `Ok(None)`.
pub fn driver_info(iface: &str) -> io::Result<Option<DriverInfo>> {
    Ok(drvinfo(iface)?.map(|(info, _)| info))
}

/// One SIOCETHTOOL request on `iface` (in the calling thread's namespace)
/// with `data` as its command buffer; the raw OS error when it fails.
///
/// # Safety
/// `data` must point at an ethtool command structure that is valid for the
/// command it holds (the kernel reads and writes it).
unsafe fn ethtool(iface: &str, data: *mut libc::c_void) -> io::Result<()> {
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name `{iface}` is longer than 15 bytes"),
        ));
    }
    let name = CString::new(iface).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a valid ifreq; `data` is valid for its command (the caller's
    // guarantee).
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 { Err(err) } else { Ok(()) }
}

/// [`driver_info`] and the number of statistics the device reports.
fn drvinfo(iface: &str) -> io::Result<Option<(DriverInfo, u32)>> {
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: `info` is a GDRVINFO command structure.
    if let Err(err) = unsafe { ethtool(iface, (&raw mut info).cast()) } {
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(None),
            Some(libc::ENODEV) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface `{iface}` here; check the name with `ip link`"),
            )),
            _ => Err(err),
        };
    }
    Ok(Some((
        DriverInfo {
            driver: c_field(&info.driver),
            bus_info: c_field(&info.bus_info),
        },
        info.n_stats,
    )))
}

const ETHTOOL_GSTATS: u32 = 0x0000_001d;

/// The peer's ifindex of veth `iface` (in the namespace the peer is in, as
/// the kernel reports it: veth's first ethtool statistic, `peer_ifindex`);
/// `None` when `iface` is not a veth. Works in whatever namespace the
/// calling thread is in, unlike /sys (which shows the mounter's).
pub fn veth_peer_index(iface: &str) -> io::Result<Option<u32>> {
    let n_stats = match drvinfo(iface)? {
        Some((info, n)) if info.driver == "veth" && n > 0 && n < 4096 => n,
        _ => return Ok(None),
    };
    // ethtool_stats { cmd: u32, n_stats: u32, data: [u64; n] }, as u64
    // words. The kernel writes as many statistics as the device has *now*,
    // whatever the buffer: room to spare in case queues were added since
    // GDRVINFO counted them.
    const SLACK: usize = 1024;
    let mut buf = vec![0u64; 1 + n_stats as usize + SLACK];
    buf[0] = u64::from(ETHTOOL_GSTATS) | (u64::from(n_stats) << 32);
    // SAFETY: `buf` is a GSTATS command structure sized for the device's
    // statistics (and more).
    unsafe { ethtool(iface, buf.as_mut_ptr().cast()) }?;
    let written = (buf[0] >> 32) as usize;
    assert!(
        written < buf.len(),
        "{iface}: the kernel wrote {written} statistics into room for {}",
        buf.len() - 1
    );
    if written == 0 {
        return Ok(None);
    }
    Ok(u32::try_from(buf[1]).ok().filter(|i| *i != 0))
}

/// The index of `iface` in the calling thread's namespace, `None` when no
/// such interface exists. One ioctl: cheaper than a link dump as soon as a
/// namespace holds more interfaces than are asked about.
pub fn index_of(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drvinfo_matches_the_kernel_layout() {
        // struct ethtool_drvinfo is 196 bytes in <linux/ethtool.h>.
        assert_eq!(std::mem::size_of::<EthtoolDrvinfo>(), 196);
    }

    #[test]
    fn loopback_is_not_physical() {
        // lo has no ethtool driver info, or a virtual one; never physical.
        let info = driver_info("lo").expect("lo exists in every namespace");
        assert!(!info.is_some_and(|i| i.is_physical()));
    }

    #[test]
    fn missing_interface_is_a_clear_error() {
        let err = driver_info("sgnonexistent0").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
