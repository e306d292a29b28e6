//! The NAT maps from userspace: the SNAT pool (`SNAT_POOL`), and the connection-tracking
//! entries (`NAT_REV`, with their forward halves in `FLOWS`) the daemon's sweeper reads and
//! removes.

use aya::maps::{Array, HashMap};
use lb_common::{Addr, FlowKey, FlowValue, NatReverse, SnatAddr};

use super::{Balancer, DataplaneError, Result, ignore_missing, typed};

/// One NAT connection as the sweeper sees it: its reverse entry, and its forward entry if
/// there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatEntry {
    /// The reply's 5-tuple (the reverse entry's key).
    pub reply: FlowKey,
    pub reverse: NatReverse,
    /// The client's 5-tuple (the forward entry's key).
    pub conn: FlowKey,
    pub forward: Option<FlowValue>,
}

impl Balancer {
    /// The address in SNAT slot `slot` (all zero: none).
    pub fn snat_slot(&self, slot: u32) -> Result<Addr> {
        let a: Array<_, SnatAddr> = typed("SNAT_POOL", self.map("SNAT_POOL"))?;
        a.get(&slot, 0)
            .map(|s| s.addr)
            .map_err(|source| DataplaneError::Map {
                map: "SNAT_POOL",
                source,
            })
    }

    /// Writes SNAT slot `slot`; the address filter follows (packets to a SNAT address may
    /// be NAT replies).
    pub fn set_snat_slot(&mut self, slot: u32, addr: &Addr) -> Result<()> {
        let mut a: Array<_, SnatAddr> = typed("SNAT_POOL", self.map_mut("SNAT_POOL"))?;
        a.set(slot, SnatAddr { addr: *addr }, 0)
            .map_err(|source| DataplaneError::Map {
                map: "SNAT_POOL",
                source,
            })?;
        let old = if *addr == [0; 16] {
            self.filter.snat.remove(&slot)
        } else {
            self.filter.snat.insert(slot, *addr)
        };
        let addrs: Vec<Addr> = old.into_iter().chain(Some(*addr)).collect();
        self.refresh_filter(&addrs)
    }

    /// Every NAT connection (a walk of `NAT_REV`, each with its forward entry).
    pub fn nat_entries(&self) -> Result<Vec<NatEntry>> {
        let rev: HashMap<_, FlowKey, NatReverse> = typed("NAT_REV", self.map("NAT_REV"))?;
        let mut out = Vec::new();
        for item in rev.iter() {
            let Ok((reply, reverse)) = item else { continue };
            let conn = forward_key(&reply, &reverse);
            let forward = self.flow(&conn)?;
            out.push(NatEntry {
                reply,
                reverse,
                conn,
                forward,
            });
        }
        Ok(out)
    }

    /// The reverse entry of a reply 5-tuple, if any.
    pub fn nat_reverse(&self, reply: &FlowKey) -> Result<Option<NatReverse>> {
        let m: HashMap<_, FlowKey, NatReverse> = typed("NAT_REV", self.map("NAT_REV"))?;
        match m.get(reply, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map {
                map: "NAT_REV",
                source,
            }),
        }
    }

    /// Removes a NAT connection: its forward entry first (when it is still this
    /// connection's), then the reverse one, which frees the port: a packet in between is
    /// still translated the old way, never with a port given to someone else.
    pub fn remove_nat(&mut self, e: &NatEntry) -> Result<()> {
        if e.forward.is_some() {
            self.remove_flow(&e.conn)?;
        }
        self.remove_nat_reverse(&e.reply)
    }

    /// Removes a reverse entry.
    pub fn remove_nat_reverse(&mut self, reply: &FlowKey) -> Result<()> {
        let mut m: HashMap<_, FlowKey, NatReverse> = typed("NAT_REV", self.map_mut("NAT_REV"))?;
        ignore_missing(m.remove(reply)).map_err(|source| DataplaneError::Map {
            map: "NAT_REV",
            source,
        })
    }
}

/// The client's 5-tuple of a NAT connection, from its reverse entry.
pub fn forward_key(reply: &FlowKey, r: &NatReverse) -> FlowKey {
    FlowKey {
        src: r.client,
        dst: r.vip,
        sport: r.client_port,
        dport: r.vip_port,
        proto: reply.proto,
        family: reply.family,
        reserved: [0; 2],
    }
}
