//! skiff's service datapath, the kube-proxy replacement.
//!
//! Socket-level load balancing (`cgroup/connect4`, `sendmsg4`, `recvmsg4`,
//! `getpeername4`): a process in the attached cgroup that connects or sends
//! to a service frontend is given a backend address before any packet
//! exists, so pod-to-service traffic pays no per-packet NAT; replies and
//! `getpeername()` show the service address again.
//!
//! Every map is pinned by name under the loader's pin directory, so traffic
//! keeps flowing while the loader is down and a new loader adopts the state.
#![no_std]
#![no_main]

mod maps;
mod nat;
mod select;
mod sock;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
