//! Socket-level load balancing on cgroup sock_addr hooks.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use skiff_ebpf_common::*;

use crate::{maps::*, select};

const ECONNREFUSED: i32 = 111;
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, false)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn skiff_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

/// Rewrites the destination of a connect() or sendmsg() to a service
/// frontend into one of its backends. `connect`: a new connection (TCP picks
/// at random); otherwise a datagram of an unconnected UDP socket, which
/// sticks to one backend per socket while the backend set is unchanged.
#[inline(always)]
fn translate(ctx: &SockAddrContext, connect: bool) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for these hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    if !connect && proto != IPPROTO_UDP {
        return ALLOW;
    }
    // ClusterIPs and ExternalIPs, and NodePorts on this node's addresses
    // (as kube-proxy serves them to local processes).
    let (dialed_addr, dialed_port) = (sa.user_ip4, sa.user_port as u16);
    let Some((key, svc)) = crate::nat::frontend(dialed_addr, dialed_port, proto) else {
        return ALLOW;
    };
    let svc = &svc;
    let stats = service_stats(svc.id);
    if svc.count == 0 {
        if let Some(s) = stats {
            s.refused += 1;
        }
        // connect()/sendmsg() fail with ECONNREFUSED, as kube-proxy's
        // REJECT rule makes them.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let flow = select::Flow {
        hash: select::mix64(cookie),
        random: connect && proto == IPPROTO_TCP,
        affinity_client: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        affinity_kind: 0,
    };
    let backend = select::backend_for(&key, svc, &flow)
        .and_then(|id| unsafe { SKIFF_BACKENDS.get(id) }.map(|b| (id, *b)));
    let Some((backend_id, backend)) = backend else {
        count_global(global::MISSING_BACKEND);
        if let Some(s) = stats {
            s.dropped += 1;
        }
        return ALLOW;
    };
    let rev_key = RevSockKey {
        cookie,
        addr_be: backend.addr_be,
        port_be: backend.port_be,
        pad: 0,
    };
    // An unconnected UDP socket sends many datagrams: write its entry once.
    if connect || unsafe { SKIFF_REV_SOCK.get(&rev_key) }.is_none() {
        // Replies show the address the application dialed (for a NodePort,
        // the node address, not the frontend's wildcard).
        let rev = RevSockValue {
            addr_be: dialed_addr,
            port_be: dialed_port,
            pad: 0,
            service_id: svc.id,
        };
        if SKIFF_REV_SOCK.insert(&rev_key, &rev, 0).is_err() {
            count_global(global::REV_SOCK_FULL);
        }
        if let Some(s) = stats {
            s.connections += 1;
        }
        if let Some(b) = backend_stats(backend_id) {
            b.connections += 1;
        }
    }
    sa.user_ip4 = backend.addr_be;
    sa.user_port = backend.port_be as u32;
    ALLOW
}

/// Shows the service address instead of the backend's to getpeername() and
/// to recvmsg() of a UDP socket that sent through a service.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    // SAFETY: as in `translate`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = RevSockKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr_be: sa.user_ip4,
        port_be: sa.user_port as u16,
        pad: 0,
    };
    if let Some(rev) = unsafe { SKIFF_REV_SOCK.get(&key) } {
        sa.user_ip4 = rev.addr_be;
        sa.user_port = rev.port_be as u32;
    }
}
