//! Every rtnetlink request the agent makes, behind small named functions.
//! Each runs inside one namespace ([`Netns::block_on`]); callers never build messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::netns::Netns;
use crate::scenario::topology::{RuleSpec, MAIN_TABLE};
use crate::types::{Family, IpNet};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags};

async fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(anyhow!("no link named {name}")),
        Err(e) => Err(anyhow!("looking up link {name}: {e}")),
    }
}

/// Bring `lo` up.
pub fn loopback_up(ns: &Netns) -> Result<()> {
    link_up(ns, "lo")
}

/// Set a link administratively up.
pub fn link_up(ns: &Netns, name: &str) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let index = index_of(&handle, name).await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting {name} up in {}", ns.name))
    })
}

/// A veth pair: `name` stays in `ns`, `peer` moves to `peer_ns`. The peer is
/// created under a temporary name and renamed as it moves, so both ends may
/// carry the same name.
pub fn veth_pair(ns: &Netns, name: &str, peer_ns: &Netns, peer: &str) -> Result<()> {
    let peer_fd = peer_ns.raw_fd();
    let temporary = format!("nv{}", rand::random::<u32>());
    ns.block_on(|| async {
        let handle = connect().await?;
        handle
            .link()
            .add(LinkVeth::new(name, &temporary).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {name}/{peer} in {}", ns.name))?;
        let index = index_of(&handle, &temporary).await?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(peer_fd)
                    .name(peer)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("moving {peer} to {}", peer_ns.name))
    })
}

/// Add an address to a link.
pub fn add_address(ns: &Netns, link: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let index = index_of(&handle, link).await?;
        handle
            .address()
            .add(index, addr, prefix)
            .execute()
            .await
            .with_context(|| format!("adding {addr}/{prefix} to {link} in {}", ns.name))
    })
}

/// Route `dest` out of `link` and/or via a gateway of the same family.
pub fn add_route(
    ns: &Netns,
    dest: IpNet,
    link: Option<&str>,
    gateway: Option<IpAddr>,
    table: Option<u32>,
) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let index = match link {
            Some(l) => Some(index_of(&handle, l).await?),
            None => None,
        };
        let message = match (dest.addr, gateway) {
            (IpAddr::V4(d), gw) => {
                let mut r = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(d, dest.prefix)
                    .table_id(table.unwrap_or(MAIN_TABLE));
                if let Some(i) = index {
                    r = r.output_interface(i);
                }
                if let Some(IpAddr::V4(g)) = gw {
                    r = r.gateway(g);
                }
                r.build()
            }
            (IpAddr::V6(d), gw) => {
                let mut r = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(d, dest.prefix)
                    .table_id(table.unwrap_or(MAIN_TABLE));
                if let Some(i) = index {
                    r = r.output_interface(i);
                }
                if let Some(IpAddr::V6(g)) = gw {
                    r = r.gateway(g);
                }
                r.build()
            }
        };
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        let dev = link.map(|l| format!(" dev {l}")).unwrap_or_default();
        let dev = match table {
            Some(t) => format!("{dev} table {t}"),
            None => dev,
        };
        handle
            .route()
            .add(message)
            .execute()
            .await
            .with_context(|| format!("adding route {dest}{via}{dev} in {}", ns.name))
    })
}

/// Add a policy routing rule.
pub fn add_rule(ns: &Netns, rule: &RuleSpec) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let req = handle
            .rule()
            .add()
            .table_id(rule.table.0)
            .action(RuleAction::ToTable);
        let req = match rule.priority {
            Some(p) => req.priority(p),
            None => req,
        };
        let req = match rule.fwmark.or(rule.not_fwmark) {
            Some(m) => req.fw_mark(m),
            None => req,
        };
        let what = rule.describe();
        let mut message = match rule.family {
            Family::Ipv4 => req.v4().message_mut().clone(),
            Family::Ipv6 => req.v6().message_mut().clone(),
        };
        if rule.not_fwmark.is_some() {
            message.header.flags |= RuleFlags::Invert;
        }
        if let Some(p) = rule.suppress_prefixlength {
            message.attributes.push(RuleAttribute::SuppressPrefixLen(p));
        }
        let mut add = handle.rule().add();
        *add.message_mut() = message;
        add.execute()
            .await
            .with_context(|| format!("adding rule {what} in {}", ns.name))
    })
}

/// Remove an address from a link.
pub fn del_address(ns: &Netns, link: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let index = index_of(&handle, link).await?;
        let mut list = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr)
            .execute();
        while let Some(msg) = list
            .try_next()
            .await
            .with_context(|| format!("listing addresses of {link} in {}", ns.name))?
        {
            if msg.header.prefix_len == prefix {
                handle.address().del(msg).execute().await.with_context(|| {
                    format!("removing {addr}/{prefix} from {link} in {}", ns.name)
                })?;
                return Ok(());
            }
        }
        Err(anyhow!("{addr}/{prefix} is not on {link} in {}", ns.name))
    })
}

/// Set a link's MTU.
pub fn set_mtu(ns: &Netns, name: &str, mtu: u32) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let index = index_of(&handle, name).await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("setting mtu {mtu} on {name}"))
    })
}

/// The rule "from `from` lookup `table`" at `priority`, as a message (for
/// adding and for deleting the same rule).
async fn source_rule(
    handle: &Handle,
    from: IpNet,
    table: u32,
    priority: u32,
) -> netlink_packet_route::rule::RuleMessage {
    let req = handle
        .rule()
        .add()
        .table_id(table)
        .priority(priority)
        .action(RuleAction::ToTable);
    match from.addr {
        IpAddr::V4(a) => req.v4().source_prefix(a, from.prefix).message_mut().clone(),
        IpAddr::V6(a) => req.v6().source_prefix(a, from.prefix).message_mut().clone(),
    }
}

/// Route what leaves from `from` by `table` (a policy rule at `priority`).
pub fn add_source_rule(ns: &Netns, from: IpNet, table: u32, priority: u32) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let message = source_rule(&handle, from, table, priority).await;
        let mut add = handle.rule().add();
        *add.message_mut() = message;
        add.execute()
            .await
            .with_context(|| format!("adding rule from {from} lookup {table} in {}", ns.name))
    })
}

/// Remove the rule `add_source_rule` added.
pub fn del_source_rule(ns: &Netns, from: IpNet, table: u32, priority: u32) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let message = source_rule(&handle, from, table, priority).await;
        handle
            .rule()
            .del(message)
            .execute()
            .await
            .with_context(|| format!("removing rule from {from} lookup {table} in {}", ns.name))
    })
}

/// Delete a link (its addresses and routes go with it).
pub fn del_link(ns: &Netns, name: &str) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        let index = index_of(&handle, name).await?;
        handle
            .link()
            .del(index)
            .execute()
            .await
            .with_context(|| format!("deleting link {name} in {}", ns.name))
    })
}

/// Drop everything routed to `dest` in `ns` (a blackhole route in the main
/// table), or, with `on` false, take that route away again.
pub fn blackhole(ns: &Netns, dest: IpNet, on: bool) -> Result<()> {
    use netlink_packet_route::route::RouteType;
    ns.block_on(|| async {
        let handle = connect().await?;
        let message = match dest.addr {
            IpAddr::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, dest.prefix)
                .kind(RouteType::BlackHole)
                .build(),
            IpAddr::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d, dest.prefix)
                .kind(RouteType::BlackHole)
                .build(),
        };
        let what = if on { "adding" } else { "removing" };
        let done = if on {
            handle.route().add(message).execute().await
        } else {
            handle.route().del(message).execute().await
        };
        done.with_context(|| format!("{what} a blackhole route to {dest} in {}", ns.name))
    })
}

/// Delete many links and source rules over one netlink connection: taking
/// hundreds of clients away one request at a time costs a thread and a
/// runtime each. What is not there any more is no error.
pub fn del_links_and_rules(
    ns: &Netns,
    links: &[String],
    rules: &[(IpNet, u32, u32)],
) -> Result<()> {
    ns.block_on(|| async {
        let handle = connect().await?;
        for (from, table, priority) in rules {
            let message = source_rule(&handle, *from, *table, *priority).await;
            let _ = handle.rule().del(message).execute().await;
        }
        for name in links {
            if let Ok(index) = index_of(&handle, name).await {
                handle
                    .link()
                    .del(index)
                    .execute()
                    .await
                    .with_context(|| format!("deleting link {name} in {}", ns.name))?;
            }
        }
        Ok(())
    })
}
