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
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
    },
    macros::classifier,
    programs::TcContext,
};
use skiff_ebpf_common::*;

use crate::nat::{Packet, TCP_FIN, TCP_RST, count, frontend, touch};
use crate::{maps::*, select};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_OFF: usize = ETH_HLEN;
const IP_CSUM: usize = IP_OFF + 10;
const IP_SRC: usize = IP_OFF + 12;
const IP_DST: usize = IP_OFF + 16;
const IPPROTO_ICMP: u8 = 1;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const AF_INET: u8 = 2;

#[classifier]
pub fn skiff_tc_ingress(ctx: TcContext) -> i32 {
    match ingress(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK as i32,
    }
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
    let key = p.ct_key(CT_REPLY);
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
fn new_flow(ctx: &TcContext, p: &Packet, fwd_key: &CtKey) -> Result<i32, ()> {
    let Some((key, svc)) = frontend(p.daddr, p.dport, p.proto) else {
        return Ok(TC_ACT_OK as i32);
    };
    if svc.count == 0 {
        if let Some(s) = service_stats(svc.id) {
            s.refused += 1;
        }
        return Ok(refuse(ctx, p));
    }
    let flow = crate::nat::flow(p, &svc);
    let Some(backend_id) = select::backend_for(&key, &svc, &flow) else {
        count_global(global::MISSING_BACKEND);
        return Ok(TC_ACT_OK as i32);
    };
    let Some(backend) = (unsafe { SKIFF_BACKENDS.get(backend_id) }).copied() else {
        count_global(global::MISSING_BACKEND);
        return Ok(TC_ACT_OK as i32);
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let snat = crate::nat::needs_snat(&svc, &backend, ifindex);

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
    let snat_addr = snat.then(|| unsafe { fib.__bindgen_anon_3.ipv4_src });
    let Some(value) = crate::nat::open_flow(p, fwd_key, svc.id, backend_id, &backend, snat_addr)
    else {
        return Ok(TC_ACT_SHOT as i32);
    };
    forward(ctx, p, &value, Some(&fib))
}

#[inline(always)]
pub fn fib_params(p: &Packet, dst: u32, ifindex: u32) -> bpf_fib_lookup {
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
