//! XDP fast path for the external interface: packets of NodePort,
//! ExternalIP and ClusterIP flows whose backend (or, for replies, whose
//! client) is reached back out of the same interface are translated and
//! sent with XDP_TX before the kernel allocates an skb — the hairpin a node
//! does for remote backends. Everything else (a backend behind another
//! interface, an unresolved neighbour, a refusal) is passed to the stack
//! untouched, where the tc program does it; both share the conntrack map,
//! so a flow is the same whichever path handles its packets.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup,
        xdp_action::{XDP_PASS, XDP_TX},
    },
    helpers::bpf_fib_lookup as fib_lookup,
    macros::xdp,
    programs::XdpContext,
};
use skiff_ebpf_common::*;

use crate::nat::{self, Packet, count, touch};
use crate::{maps::*, select, tc::fib_params};

const ETH_HLEN: usize = 14;
const IP_OFF: usize = ETH_HLEN;

#[xdp]
pub fn skiff_xdp(ctx: XdpContext) -> u32 {
    match handle(&ctx) {
        Some(action) => action,
        None => XDP_PASS,
    }
}

#[inline(always)]
fn ptr<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: bounds checked against data_end by `ptr`; unaligned reads.
    ptr::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, offset: usize, v: T) -> Option<()> {
    // SAFETY: as above.
    ptr::<T>(ctx, offset).map(|p| unsafe { p.write_unaligned(v) })
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<Packet> {
    let eth_proto: u16 = read(ctx, 12)?;
    if u16::from_be(eth_proto) != 0x0800 {
        return None;
    }
    let vihl: u8 = read(ctx, IP_OFF)?;
    // Options-free headers only: the rest is the stack's.
    if vihl != 0x45 {
        return None;
    }
    let frag: u16 = read(ctx, IP_OFF + 6)?;
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let proto: u8 = read(ctx, IP_OFF + 9)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let l4 = IP_OFF + 20;
    let tcp_flags = if proto == IPPROTO_TCP {
        read::<u8>(ctx, l4 + 13)?
    } else {
        0
    };
    // Both checksums must be in the frame before anything is rewritten.
    if proto == IPPROTO_TCP {
        read::<u16>(ctx, l4 + 16)?;
    } else {
        read::<u16>(ctx, l4 + 6)?;
    }
    Some(Packet {
        proto,
        l4,
        saddr: read(ctx, IP_OFF + 12)?,
        daddr: read(ctx, IP_OFF + 16)?,
        sport: read(ctx, l4)?,
        dport: read(ctx, l4 + 2)?,
        len: (ctx.data_end() - ctx.data()) as u32,
        tcp_flags,
    })
}

/// RFC 1624 incremental update of a checksum (all values as they sit in the
/// packet: one's complement sums do not care about byte order).
#[inline(always)]
fn csum16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn csum32(check: u16, old: u32, new: u32) -> u16 {
    csum16(
        csum16(check, old as u16, new as u16),
        (old >> 16) as u16,
        (new >> 16) as u16,
    )
}

/// Rewrites an address and port (`dst`, else source) with both checksums.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    p: &Packet,
    dst: bool,
    old_addr: u32,
    addr: u32,
    old_port: u16,
    port: u16,
) -> Option<()> {
    let (addr_off, port_off) = if dst {
        (IP_OFF + 16, p.l4 + 2)
    } else {
        (IP_OFF + 12, p.l4)
    };
    let csum_off = if p.proto == IPPROTO_TCP {
        p.l4 + 16
    } else {
        p.l4 + 6
    };
    let ip_check: u16 = read(ctx, IP_OFF + 10)?;
    write(ctx, IP_OFF + 10, csum32(ip_check, old_addr, addr))?;
    let l4_check: u16 = read(ctx, csum_off)?;
    // A UDP checksum of 0 means none; a computed 0 is sent as 0xffff.
    if p.proto == IPPROTO_TCP || l4_check != 0 {
        let mut c = csum16(csum32(l4_check, old_addr, addr), old_port, port);
        if p.proto == IPPROTO_UDP && c == 0 {
            c = 0xffff;
        }
        write(ctx, csum_off, c)?;
    }
    write(ctx, addr_off, addr)?;
    write(ctx, port_off, port)
}

/// Looks the route to `dst` up; `Some` only when it leaves by the
/// interface the packet came in on with a resolved neighbour (XDP_TX).
#[inline(always)]
fn same_link_route(
    ctx: &XdpContext,
    p: &Packet,
    dst: u32,
    src_lookup: bool,
) -> Option<bpf_fib_lookup> {
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let mut f = fib_params(p, dst, ifindex);
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut f,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            if src_lookup { BPF_FIB_LOOKUP_SRC } else { 0 },
        )
    };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && f.ifindex == ifindex).then_some(f)
}

#[inline(always)]
fn transmit(ctx: &XdpContext, f: &bpf_fib_lookup) -> Option<u32> {
    write(ctx, 0, f.dmac)?;
    write(ctx, 6, f.smac)?;
    count_global(global::XDP_TX);
    Some(XDP_TX)
}

#[inline(always)]
fn handle(ctx: &XdpContext) -> Option<u32> {
    let p = parse(ctx)?;
    let key = p.ct_key(CT_REPLY);
    if let Some(ct) = SKIFF_CT.get_ptr_mut(&key) {
        // SAFETY: an LRU entry stays valid for this program run.
        let ct = unsafe { &mut *ct };
        let client = if ct.flags & CT_SNAT != 0 {
            ct.snat_addr_be
        } else {
            p.daddr
        };
        let f = same_link_route(ctx, &p, client, false)?;
        touch(ct, &p);
        let ct = *ct;
        rewrite(
            ctx,
            &p,
            false,
            p.saddr,
            ct.nat_addr_be,
            p.sport,
            ct.nat_port_be,
        )?;
        if ct.flags & CT_SNAT != 0 {
            rewrite(
                ctx,
                &p,
                true,
                p.daddr,
                ct.snat_addr_be,
                p.dport,
                ct.snat_port_be,
            )?;
        }
        count(ct.service_id, ct.backend_id, &p, false);
        return transmit(ctx, &f);
    }
    let key = CtKey {
        dir: CT_FORWARD,
        ..key
    };
    let ct = match SKIFF_CT.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(ct) if unsafe { SKIFF_BACKENDS.get((*ct).backend_id) }.is_some() => {
            let ct = unsafe { &mut *ct };
            let f = same_link_route(ctx, &p, ct.nat_addr_be, false)?;
            touch(ct, &p);
            count(ct.service_id, ct.backend_id, &p, false);
            (*ct, f)
        }
        Some(_) => return None, // backend gone: tc balances afresh
        None => new_flow(ctx, &p, &key)?,
    };
    let (ct, f) = ct;
    rewrite(
        ctx,
        &p,
        true,
        p.daddr,
        ct.nat_addr_be,
        p.dport,
        ct.nat_port_be,
    )?;
    if ct.flags & CT_SNAT != 0 {
        rewrite(
            ctx,
            &p,
            false,
            p.saddr,
            ct.snat_addr_be,
            p.sport,
            ct.snat_port_be,
        )?;
    }
    transmit(ctx, &f)
}

/// A new flow is taken here only when its backend is back out of this
/// interface; otherwise nothing is recorded and the stack (tc) takes it.
#[inline(always)]
fn new_flow(ctx: &XdpContext, p: &Packet, fwd_key: &CtKey) -> Option<(CtValue, bpf_fib_lookup)> {
    let (key, svc) = nat::frontend(p.daddr, p.dport, p.proto)?;
    if svc.count == 0 {
        return None; // refused by tc
    }
    let backend_id = select::backend_for(&key, &svc, &nat::flow(p, &svc))?;
    let backend = unsafe { SKIFF_BACKENDS.get(backend_id) }.copied()?;
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let snat = nat::needs_snat(&svc, &backend, ifindex);
    let f = same_link_route(ctx, p, backend.addr_be, snat)?;
    let snat_addr = snat.then(|| unsafe { f.__bindgen_anon_3.ipv4_src });
    let value = nat::open_flow(p, fwd_key, svc.id, backend_id, &backend, snat_addr)?;
    Some((value, f))
}
