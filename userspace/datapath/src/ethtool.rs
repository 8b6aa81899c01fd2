//! The driver behind a network interface (ETHTOOL_GDRVINFO), to choose the
//! XDP mode: a veth delivers natively transmitted XDP frames only to a peer
//! with NAPI on, which this side cannot see or ensure, so veths get generic
//! XDP; other drivers get native XDP.
#![allow(unsafe_code)]

use std::os::fd::AsFd;

const SIOCETHTOOL: u32 = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

#[repr(C)]
struct DrvInfo {
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
struct IfReq {
    name: [u8; 16],
    data: *mut DrvInfo,
    pad: [u8; 16],
}

/// The driver name of `iface` in the calling thread's network namespace.
pub fn driver(iface: &str) -> std::io::Result<String> {
    if iface.len() >= 16 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO reads an ifreq whose data
    // points at a struct ethtool_drvinfo (laid out above, as in
    // <linux/ethtool.h>) and fills it; both live for the whole call.
    unsafe {
        let op = rustix::ioctl::Updater::<{ SIOCETHTOOL as rustix::ioctl::Opcode }, IfReq>::new(
            &mut req,
        );
        rustix::ioctl::ioctl(socket.as_fd(), op)?;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
