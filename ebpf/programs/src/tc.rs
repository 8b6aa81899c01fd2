//! Packet-level load balancing in tc (clsact ingress), for what the socket
//! hooks never see: NodePort and ExternalIP traffic from other hosts,
//! ClusterIP traffic arriving from outside or from a pod's veth, and the
//! replies of all of it.
//!
//! A new flow to a frontend gets a backend and two conntrack entries (the
//! forward tuple and the reply tuple); its packets are DNATed to the
//! backend, SNATed to this node's address when the backend is elsewhere
//! and the reply must come back here (traffic policy Cluster), and
//! redirected to the egress interface the FIB names. Replies are matched by
//! their tuple and translated back. A frontend without backends answers a
//! TCP segment with a RST and a UDP datagram with ICMP port unreachable.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect,
        bpf_redirect_neigh, bpf_skb_change_tail,
    },
    macros::classifier,
    programs::TcContext,
};
use skiff_ebpf_common::*;

use crate::{maps::*, select};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_OFF: usize = ETH_HLEN;
const IP_CSUM: usize = IP_OFF + 10;
const IP_SRC: usize = IP_OFF + 12;
const IP_DST: usize = IP_OFF + 16;
const IPPROTO_ICMP: u8 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const AF_INET: u8 = 2;

struct Packet {
    proto: u8,
    l4: usize,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    len: u32,
    tcp_flags: u8,
}

#[classifier]
pub fn skiff_tc_ingress(ctx: TcContext) -> i32 {
    match ingress(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK as i32,
    }
}

#[inline(always)]
fn now() -> u32 {
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Packet>, ()> {
    let eth_proto: u16 = ctx.load(12).map_err(|_| ())?;
    if u16::from_be(eth_proto) != ETH_P_IP {
        return Ok(None);
    }
    let vihl: u8 = ctx.load(IP_OFF).map_err(|_| ())?;
    if vihl >> 4 != 4 {
        return Ok(None);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Ok(None);
    }
    let frag: u16 = ctx.load(IP_OFF + 6).map_err(|_| ())?;
    if u16::from_be(frag) & 0x1fff != 0 {
        // A later fragment has no ports: not ours to translate.
        return Ok(None);
    }
    let proto: u8 = ctx.load(IP_OFF + 9).map_err(|_| ())?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(None);
    }
    let l4 = IP_OFF + ihl;
    let tcp_flags = if proto == IPPROTO_TCP {
        ctx.load::<u8>(l4 + 13).map_err(|_| ())?
    } else {
        0
    };
    Ok(Some(Packet {
        proto,
        l4,
        saddr: ctx.load(IP_SRC).map_err(|_| ())?,
        daddr: ctx.load(IP_DST).map_err(|_| ())?,
        sport: ctx.load(l4).map_err(|_| ())?,
        dport: ctx.load(l4 + 2).map_err(|_| ())?,
        len: ctx.len(),
        tcp_flags,
    }))
}

#[inline(always)]
fn ingress(ctx: &TcContext) -> Result<i32, ()> {
    let Some(p) = parse(ctx)? else {
        return Ok(TC_ACT_OK as i32);
    };
    let key = CtKey {
        src_be: p.saddr,
        dst_be: p.daddr,
        sport_be: p.sport,
        dport_be: p.dport,
        proto: p.proto,
        dir: CT_REPLY,
        pad: 0,
    };
    if let Some(ct) = SKIFF_CT.get_ptr_mut(&key) {
        // SAFETY: an LRU entry stays valid for this program run.
        let ct = unsafe { &mut *ct };
        touch(ct, &p);
        count(ct.service_id, ct.backend_id, &p, false);
        return reply(ctx, &p, ct);
    }
    let key = CtKey {
        dir: CT_FORWARD,
        ..key
    };
    if let Some(ct) = SKIFF_CT.get_ptr_mut(&key) {
        // SAFETY: as above.
        let ct = unsafe { &mut *ct };
        // A flow whose backend was removed is balanced afresh.
        if unsafe { SKIFF_BACKENDS.get(ct.backend_id) }.is_some() {
            touch(ct, &p);
            count(ct.service_id, ct.backend_id, &p, false);
            let value = *ct;
            return forward(ctx, &p, &value, None);
        }
        let _ = SKIFF_CT.remove(&key);
    }
    new_flow(ctx, &p, &key)
}

#[inline(always)]
fn touch(ct: &mut CtValue, p: &Packet) {
    let t = now();
    if ct.last_seen != t {
        ct.last_seen = t;
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && ct.flags & CT_CLOSING == 0 {
        ct.flags |= CT_CLOSING;
    }
}

#[inline(always)]
fn count(service_id: u32, backend_id: u32, p: &Packet, new: bool) {
    if let Some(s) = service_stats(service_id) {
        s.packets += 1;
        s.bytes += p.len as u64;
        if new {
            s.connections += 1;
        }
    }
    if let Some(b) = backend_stats(backend_id) {
        b.packets += 1;
        b.bytes += p.len as u64;
        if new {
            b.connections += 1;
        }
    }
}

/// The frontend a packet is addressed to: its exact address, else a
/// NodePort when the address is one of this node's.
#[inline(always)]
fn frontend(p: &Packet) -> Option<(ServiceKey, ServiceEntry)> {
    let mut key = ServiceKey {
        addr_be: p.daddr,
        port_be: p.dport,
        slot: 0,
        proto: p.proto,
        scope: SCOPE_ALL,
        pad: [0; 2],
    };
    for node_port in [false, true] {
        if node_port {
            if unsafe { SKIFF_NODE_IPS.get(p.daddr) }.is_none() {
                return None;
            }
            key.addr_be = 0;
        }
        for scope in [SCOPE_ALL, SCOPE_LOCAL] {
            key.scope = scope;
            if let Some(svc) = unsafe { SKIFF_SERVICES.get(&key) } {
                return Some((key, *svc));
            }
        }
    }
    None
}

#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Packet, fwd_key: &CtKey) -> Result<i32, ()> {
    let Some((key, svc)) = frontend(p) else {
        return Ok(TC_ACT_OK as i32);
    };
    if svc.count == 0 {
        if let Some(s) = service_stats(svc.id) {
            s.refused += 1;
        }
        return Ok(refuse(ctx, p));
    }
    let flow = select::Flow {
        hash: select::mix64(
            ((p.saddr as u64) << 32 | p.daddr as u64)
                ^ ((p.sport as u64) << 16 | p.dport as u64) << 7
                ^ p.proto as u64,
        ),
        random: svc.flags & flags::MAGLEV == 0,
        affinity_client: p.saddr as u64,
        affinity_kind: 1,
    };
    let Some(backend_id) = select::backend_for(&key, &svc, &flow) else {
        count_global(global::MISSING_BACKEND);
        return Ok(TC_ACT_OK as i32);
    };
    let Some(backend) = (unsafe { SKIFF_BACKENDS.get(backend_id) }).copied() else {
        count_global(global::MISSING_BACKEND);
        return Ok(TC_ACT_OK as i32);
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let external_iface =
        unsafe { SKIFF_IFACES.get(ifindex) }.is_some_and(|f| f & iface_flags::EXTERNAL != 0);
    let snat = backend.flags & backend_flags::LOCAL == 0
        && svc.flags & flags::LOCAL == 0
        && (svc.flags & (flags::NODE_PORT | flags::EXTERNAL_IP) != 0 || external_iface);

    let mut fib = fib_params(p, backend.addr_be, ifindex);
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            if snat { BPF_FIB_LOOKUP_SRC } else { 0 },
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        count_global(global::NO_ROUTE);
        return Ok(TC_ACT_SHOT as i32);
    }
    let mut value = CtValue {
        nat_addr_be: backend.addr_be,
        snat_addr_be: 0,
        nat_port_be: backend.port_be,
        snat_port_be: 0,
        service_id: svc.id,
        backend_id,
        last_seen: now(),
        flags: 0,
    };
    let mut reply_key = CtKey {
        src_be: backend.addr_be,
        dst_be: p.saddr,
        sport_be: backend.port_be,
        dport_be: p.sport,
        proto: p.proto,
        dir: CT_REPLY,
        pad: 0,
    };
    let reply_value = CtValue {
        nat_addr_be: p.daddr,
        snat_addr_be: p.saddr,
        nat_port_be: p.dport,
        snat_port_be: p.sport,
        service_id: svc.id,
        backend_id,
        last_seen: value.last_seen,
        flags: if snat { CT_SNAT } else { 0 },
    };
    if snat {
        let snat_addr = unsafe { fib.__bindgen_anon_3.ipv4_src };
        value.flags = CT_SNAT;
        value.snat_addr_be = snat_addr;
        reply_key.dst_be = snat_addr;
        // Keep the client's port when it is free towards this backend,
        // else try a few others in the ephemeral range.
        let mut port = p.sport;
        let mut placed = false;
        for attempt in 0..4u32 {
            if attempt > 0 {
                let r = unsafe { bpf_get_prandom_u32() } % 28_232 + 32_768;
                port = (r as u16).to_be();
            }
            reply_key.dport_be = port;
            if SKIFF_CT
                .insert(&reply_key, &reply_value, BPF_NOEXIST as u64)
                .is_ok()
            {
                placed = true;
                break;
            }
        }
        if !placed {
            count_global(global::CT_FULL);
            return Ok(TC_ACT_SHOT as i32);
        }
        value.snat_port_be = port;
    } else if SKIFF_CT.insert(&reply_key, &reply_value, 0).is_err() {
        count_global(global::CT_FULL);
        return Ok(TC_ACT_OK as i32);
    }
    if SKIFF_CT.insert(fwd_key, &value, 0).is_err() {
        count_global(global::CT_FULL);
        let _ = SKIFF_CT.remove(&reply_key);
        return Ok(TC_ACT_OK as i32);
    }
    count(svc.id, backend_id, p, true);
    forward(ctx, p, &value, Some(&fib))
}

#[inline(always)]
fn fib_params(p: &Packet, dst: u32, ifindex: u32) -> bpf_fib_lookup {
    // SAFETY: a plain C struct; all zeros is its neutral value.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = p.proto;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_1.tot_len = 0;
    fib.__bindgen_anon_4.ipv4_dst = dst;
    fib
}

/// Rewrites one address and port of the packet (`dst`: destination, else
/// source) with the checksums, the L4 one through the pseudo header.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    dst: bool,
    old_addr: u32,
    addr: u32,
    old_port: u16,
    port: u16,
) -> Result<(), ()> {
    let (addr_off, port_off) = if dst {
        (IP_DST, p.l4 + 2)
    } else {
        (IP_SRC, p.l4)
    };
    let (csum_off, mangled) = if p.proto == IPPROTO_TCP {
        (p.l4 + 16, 0)
    } else {
        (p.l4 + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    // A UDP checksum of 0 means none: leave it so.
    let l4_csum = p.proto == IPPROTO_TCP || ctx.load::<u16>(csum_off).map_err(|_| ())? != 0;
    if old_addr != addr {
        if l4_csum {
            ctx.l4_csum_replace(
                csum_off,
                old_addr as u64,
                addr as u64,
                BPF_F_PSEUDO_HDR as u64 | mangled | 4,
            )
            .map_err(|_| ())?;
        }
        ctx.l3_csum_replace(IP_CSUM, old_addr as u64, addr as u64, 4)
            .map_err(|_| ())?;
        ctx.store(addr_off, &addr, 0).map_err(|_| ())?;
    }
    if old_port != port {
        if l4_csum {
            ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, mangled | 2)
                .map_err(|_| ())?;
        }
        ctx.store(port_off, &port, 0).map_err(|_| ())?;
    }
    Ok(())
}

#[inline(always)]
fn forward(
    ctx: &TcContext,
    p: &Packet,
    ct: &CtValue,
    fib: Option<&bpf_fib_lookup>,
) -> Result<i32, ()> {
    rewrite(
        ctx,
        p,
        true,
        p.daddr,
        ct.nat_addr_be,
        p.dport,
        ct.nat_port_be,
    )?;
    if ct.flags & CT_SNAT != 0 {
        rewrite(
            ctx,
            p,
            false,
            p.saddr,
            ct.snat_addr_be,
            p.sport,
            ct.snat_port_be,
        )?;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match fib {
        Some(f) => Ok(send(ctx, f)),
        None => {
            let mut f = fib_params(p, ct.nat_addr_be, ifindex);
            if ct.flags & CT_SNAT != 0 {
                f.__bindgen_anon_3.ipv4_src = ct.snat_addr_be;
            }
            Ok(route(ctx, &mut f))
        }
    }
}

#[inline(always)]
fn reply(ctx: &TcContext, p: &Packet, ct: &CtValue) -> Result<i32, ()> {
    rewrite(
        ctx,
        p,
        false,
        p.saddr,
        ct.nat_addr_be,
        p.sport,
        ct.nat_port_be,
    )?;
    let mut dst = p.daddr;
    if ct.flags & CT_SNAT != 0 {
        rewrite(
            ctx,
            p,
            true,
            p.daddr,
            ct.snat_addr_be,
            p.dport,
            ct.snat_port_be,
        )?;
        dst = ct.snat_addr_be;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut f = fib_params(p, dst, ifindex);
    f.__bindgen_anon_3.ipv4_src = ct.nat_addr_be;
    Ok(route(ctx, &mut f))
}

#[inline(always)]
fn route(ctx: &TcContext, f: &mut bpf_fib_lookup) -> i32 {
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            f,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        count_global(global::NO_ROUTE);
        return TC_ACT_SHOT as i32;
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return unsafe { bpf_redirect_neigh(f.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    send(ctx, f)
}

/// Out of the interface a successful FIB lookup named, with its MACs (or
/// through the neighbour subsystem when the next hop is unresolved).
#[inline(always)]
fn send(ctx: &TcContext, f: &bpf_fib_lookup) -> i32 {
    if f.dmac == [0; 6] {
        return unsafe { bpf_redirect_neigh(f.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    if ctx.store(0, &f.dmac, 0).is_err() || ctx.store(6, &f.smac, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    unsafe { bpf_redirect(f.ifindex, 0) as i32 }
}

/// Answers a packet to a frontend without backends the way kube-proxy's
/// REJECT rule does: TCP RST, or ICMP port unreachable for UDP, sent back
/// out of the interface it came in on.
#[inline(always)]
fn refuse(ctx: &TcContext, p: &Packet) -> i32 {
    let built = if p.proto == IPPROTO_TCP {
        // Never answer a RST with a RST.
        if p.tcp_flags & TCP_RST != 0 {
            return TC_ACT_SHOT as i32;
        }
        tcp_rst(ctx, p)
    } else {
        icmp_unreachable(ctx, p)
    };
    if built.is_err() {
        count_global(global::REFUSE_FAILED);
        return TC_ACT_SHOT as i32;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// One's complement sum of `words` folded to 16 bits, complemented.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
fn sum_words(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u64;
        i += 2;
    }
    sum
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let dst: [u8; 6] = ctx.load(0).map_err(|_| ())?;
    let src: [u8; 6] = ctx.load(6).map_err(|_| ())?;
    ctx.store(0, &src, 0).map_err(|_| ())?;
    ctx.store(6, &dst, 0).map_err(|_| ())
}

#[inline(always)]
fn ip_header(proto: u8, total: u16, src: u32, dst: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.to_ne_bytes());
    h[16..20].copy_from_slice(&dst.to_ne_bytes());
    let c = fold(sum_words(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

#[inline(always)]
fn tcp_rst(ctx: &TcContext, p: &Packet) -> Result<(), ()> {
    if p.l4 != IP_OFF + 20 {
        return Err(()); // IP options: not answered, dropped
    }
    let seq: u32 = u32::from_be(ctx.load(p.l4 + 4).map_err(|_| ())?);
    let ack: u32 = u32::from_be(ctx.load(p.l4 + 8).map_err(|_| ())?);
    let doff = ((ctx.load::<u8>(p.l4 + 12).map_err(|_| ())? >> 4) as u32) * 4;
    let tot: u16 = u16::from_be(ctx.load(IP_OFF + 2).map_err(|_| ())?);
    let payload = (tot as u32).saturating_sub(20 + doff);
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&p.dport.to_ne_bytes());
    h[2..4].copy_from_slice(&p.sport.to_ne_bytes());
    let (rst_seq, flags) = if p.tcp_flags & TCP_ACK != 0 {
        (ack, TCP_RST)
    } else {
        (0, TCP_RST | TCP_ACK)
    };
    let syn_fin = (p.tcp_flags & TCP_SYN != 0) as u32 + (p.tcp_flags & TCP_FIN != 0) as u32;
    h[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    h[8..12].copy_from_slice(&seq.wrapping_add(payload + syn_fin).to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    let pseudo = sum_words(&p.daddr.to_ne_bytes())
        + sum_words(&p.saddr.to_ne_bytes())
        + IPPROTO_TCP as u64
        + 20;
    let c = fold(pseudo + sum_words(&h));
    h[16..18].copy_from_slice(&c.to_be_bytes());
    let ip = ip_header(IPPROTO_TCP, 40, p.daddr, p.saddr);
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 40) as u32, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    ctx.store(IP_OFF, &ip, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 20, &h, 0).map_err(|_| ())
}

#[inline(always)]
fn icmp_unreachable(ctx: &TcContext, p: &Packet) -> Result<(), ()> {
    if p.l4 != IP_OFF + 20 {
        return Err(());
    }
    // The original IP header and first 8 bytes of the datagram.
    let quoted: [u8; 28] = ctx.load(IP_OFF).map_err(|_| ())?;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 20 + 8 + 28) as u32, 0) } != 0 {
        return Err(());
    }
    let mut icmp = [0u8; 8];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 3; // port unreachable
    let c = fold(sum_words(&icmp) + sum_words(&quoted));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let ip = ip_header(IPPROTO_ICMP, 56, p.daddr, p.saddr);
    swap_macs(ctx)?;
    ctx.store(IP_OFF, &ip, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 20, &icmp, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 28, &quoted, 0).map_err(|_| ())
}
