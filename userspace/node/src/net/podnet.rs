//! A pod's network, over netlink: its namespace, a veth pair (`eth0`
//! inside), its address from the node's podCIDR, and the routes — the
//! point-to-point model of the CNI `ptp` plugin: the pod has a /32 and a
//! default route via the gateway (the podCIDR's first address, which every
//! host-side veth carries); the host routes each pod's /32 to its veth.
//! No bridge, so pods reach each other only through the host's routing —
//! where the datapath's tc programs see every packet.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::ipam::Cidr;
use super::netns;

/// What the pod got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The host side of the veth pair.
    pub host_veth: String,
}

/// The host-side veth name of a pod: short (IFNAMSIZ), stable, unique.
pub fn host_veth_name(pod_uid: &str) -> String {
    // FNV-1a of the uid: 40 bits in 10 hex digits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_uid.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("skf{:010x}", h & 0xff_ffff_ffff)
}

/// A netlink handle whose socket lives in the namespace at `path` (or this
/// process's when `None`); its connection task runs on the current runtime.
pub async fn handle_in(path: Option<&Path>) -> Result<Handle> {
    let rt = tokio::runtime::Handle::current();
    let open = move || -> Result<_> {
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        Ok((conn, handle))
    };
    let (conn, handle) = match path {
        Some(p) => netns::run_in(p, open)?,
        None => open()?,
    };
    tokio::spawn(conn);
    Ok(handle)
}

pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
        Err(e) => Err(anyhow!("looking up link {name}: {e}")),
    }
}

const fn libc_enodev() -> i32 {
    19
}

/// Sets up the pod's network in the namespace at `netns_path` (which must
/// exist): veth, addresses, routes. Idempotent: a half-done setup from a
/// crash is finished, a complete one left as it is.
pub async fn setup(
    host: &Handle,
    netns_path: &Path,
    pod_uid: &str,
    ip: Ipv4Addr,
    cidr: Cidr,
    mtu: Option<u32>,
) -> Result<PodNetwork> {
    let gateway = cidr.gateway();
    let host_veth = host_veth_name(pod_uid);
    let pod = handle_in(Some(netns_path)).await?;
    let temp_peer = format!("skp{}", &host_veth[3..]);

    if link_index(host, &host_veth).await?.is_none() {
        // A peer left over in the host namespace by a crash is removed first.
        if let Some(i) = link_index(host, &temp_peer).await? {
            host.link().del(i).execute().await.ok();
        }
        let mut veth = LinkVeth::new(&host_veth, &temp_peer);
        if let Some(m) = mtu {
            veth = veth.mtu(m);
        }
        host.link()
            .add(veth.build())
            .execute()
            .await
            .map_err(|e| anyhow!("creating veth {host_veth}: {e}"))?;
    }
    let host_index = link_index(host, &host_veth)
        .await?
        .context("the host veth vanished")?;

    // Move the peer into the pod (if it is still here) and name it eth0.
    if let Some(peer) = link_index(host, &temp_peer).await? {
        let ns = std::fs::File::open(netns_path)?;
        host.link()
            .set(
                LinkUnspec::new_with_index(peer)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| anyhow!("moving the veth peer into the pod: {e}"))?;
    }
    let eth0 = match link_index(&pod, "eth0").await? {
        Some(i) => i,
        None => {
            let i = link_index(&pod, &temp_peer)
                .await?
                .context("the pod's veth end is neither in the host nor in the pod")?;
            pod.link()
                .set(LinkUnspec::new_with_index(i).name("eth0".into()).build())
                .execute()
                .await
                .map_err(|e| anyhow!("renaming the pod's veth to eth0: {e}"))?;
            i
        }
    };

    // Pod side: lo and eth0 up, the /32, the gateway, the default route.
    let lo = link_index(&pod, "lo").await?.context("the pod has no lo")?;
    for i in [lo, eth0] {
        pod.link()
            .set(LinkUnspec::new_with_index(i).up().build())
            .execute()
            .await
            .map_err(|e| anyhow!("bringing a pod link up: {e}"))?;
    }
    add_address(&pod, eth0, ip, 32).await?;
    add_route(
        &pod,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gateway, 32)
            .output_interface(eth0)
            .scope(RouteScope::Link)
            .build(),
    )
    .await?;
    add_route(
        &pod,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(eth0)
            .build(),
    )
    .await?;

    // Host side: up, the gateway address, the route to the pod.
    host.link()
        .set(LinkUnspec::new_with_index(host_index).up().build())
        .execute()
        .await
        .map_err(|e| anyhow!("bringing {host_veth} up: {e}"))?;
    add_address(host, host_index, gateway, 32).await?;
    add_route(
        host,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(host_index)
            .scope(RouteScope::Link)
            .build(),
    )
    .await?;
    for (key, value) in [
        (
            format!("/proc/sys/net/ipv4/conf/{host_veth}/forwarding"),
            "1",
        ),
        // Replies to the gateway's ARP from any pod address.
        (
            format!("/proc/sys/net/ipv4/conf/{host_veth}/rp_filter"),
            "0",
        ),
    ] {
        std::fs::write(&key, value).with_context(|| format!("writing {key}"))?;
    }
    Ok(PodNetwork {
        ip,
        gateway,
        host_veth,
    })
}

async fn add_address(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => Ok(()), // EEXIST
        Err(e) => Err(anyhow!("adding address {ip}/{prefix}: {e}")),
    }
}

async fn add_route(h: &Handle, route: rtnetlink::packet_route::route::RouteMessage) -> Result<()> {
    match h.route().add(route).replace().execute().await {
        Ok(()) => Ok(()),
        Err(e) => Err(anyhow!("adding a route: {e}")),
    }
}

/// Removes the pod's veth (deleting one end removes both and the routes
/// through it). The namespace itself is removed by the caller.
pub async fn teardown(host: &Handle, pod_uid: &str) -> Result<()> {
    let name = host_veth_name(pod_uid);
    for n in [name.clone(), format!("skp{}", &name[3..])] {
        if let Some(i) = link_index(host, &n).await? {
            match host.link().del(i).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => {}
                Err(e) => bail!("deleting {n}: {e}"),
            }
        }
    }
    Ok(())
}

/// Routes another node's podCIDR via that node's address (native
/// routing); replaces what was there.
pub async fn route_pod_cidr(host: &Handle, cidr: Cidr, via: Ipv4Addr) -> Result<()> {
    add_route(
        host,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix)
            .gateway(via)
            .build(),
    )
    .await
}

pub async fn unroute_pod_cidr(host: &Handle, cidr: Cidr) -> Result<()> {
    let r = host
        .route()
        .del(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(cidr.network(), cidr.prefix)
                .build(),
        )
        .execute()
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -3 => Ok(()), // ESRCH
        Err(e) => Err(anyhow!("removing the route to {cidr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_ifnamsiz_and_differ() {
        let a = host_veth_name("6f1c8a0e-0000-4000-8000-000000000001");
        let b = host_veth_name("6f1c8a0e-0000-4000-8000-000000000002");
        assert_eq!(a.len(), 13);
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name("6f1c8a0e-0000-4000-8000-000000000001"));
    }
}
