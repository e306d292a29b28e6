//! Predicting in userspace what the data plane will do with a packet.
//!
//! Built from the same `lb-common` functions the XDP program runs (parser, flow key, flow
//! hash, slot reduction, the resolver's `how` bits) and the live maps, so tests and
//! operators can ask "which backend takes this packet?" and get the kernel's answer without
//! sending it. [`Balancer::predict`] mirrors the data plane's one resolver
//! (`lb-ebpf/src/select.rs::resolve`) step by step; a test runs both on the same packets
//! and map states and checks they agree (`tests/tests/resolver.rs`). It predicts the
//! choice of backend, not the rest of the packet's fate (the checks of `lb_common::admit`,
//! the FIB).

use lb_common::{
    ADMIN_F_FAILING, Backend, CFG_F_WILDCARD_VIPS, CT_F_FIN, CT_F_REPLIED, CT_F_RST, FLOW_F_NAT,
    FlowKey, FlowValue, MODE_DSR, MODE_NAT_CLIENT, VIP_F_HASH_SOURCE, VipInfo, VipKey,
    hash::{flow_hash, flow_key, maglev_slot},
    parse::{Headers, L4, Parsed, parse},
    resolve::{COUNT_NEW, REMEMBER, START, how},
};

use crate::dataplane::{Balancer, DataplaneError};

/// What the balancer does with a TCP or UDP packet addressed to a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// The VIP the packet's address, port and protocol find (its port is 0 for an any-port
    /// VIP), if any. The kernel does not look it up when the flow table answers first.
    pub vip: Option<(VipKey, VipInfo)>,
    /// The VIP index the packet is counted for (`VIP_STATS`): on a flow-table hit the one
    /// the backend entry names (`Backend::vip`), otherwise the VIP found.
    pub vip_index: u32,
    /// The flow-table key the resolver ended with: the 5-tuple, or a source-affinity VIP's
    /// per-client key.
    pub flow: FlowKey,
    /// The flow hash of `flow`, which also seeds the outer IPv6 flow label.
    pub hash: u32,
    /// The backend the VIP's Maglev table has for `flow` (0: none, or no VIP found).
    pub maglev_backend: u32,
    /// The flow-table entry that decided, when the flow table answered.
    pub remembered: Option<FlowValue>,
    /// Whether the packet counts as a new flow (`new_flows`).
    pub new_flow: bool,
}

impl Prediction {
    /// The backend the packet goes to: the remembered one, else Maglev's (0: dropped).
    pub fn backend(&self) -> u32 {
        self.remembered.map_or(self.maglev_backend, |v| v.backend)
    }
}

impl Balancer {
    /// What the program will do with `frame`: `None` when it is not VIP traffic (no VIP
    /// takes it: the program passes it, or drops it as `not_vip_port`), else the VIP, the
    /// flow and the backend.
    ///
    /// The steps of the kernel's `select::resolve`, in its order: the address filter; the
    /// flow table with the 5-tuple (not for a SYN); the VIP, exact port then any-port
    /// (only with `CFG_F_WILDCARD_VIPS`); for a source-affinity VIP the flow table with the
    /// client's key (not for a SYN); Maglev; for a SYN with a Maglev choice, its own entry
    /// if it is retransmitted (`lb_common::resolve::START`).
    pub fn predict(&self, frame: &[u8]) -> Result<Option<Prediction>, DataplaneError> {
        let Parsed::Ip(h) = parse(frame) else {
            return Ok(None);
        };
        if h.l4 != L4::Ports || !self.may_be_vip(&h.dst)? {
            return Ok(None);
        }
        let how = how(&h);
        let fresh = how & START != 0;
        let mut flow = flow_key(&h, h.dport, 0);
        let vip = self.find_vip(&flow)?;
        // 1. The 5-tuple's entry.
        if !fresh && let Some(v) = self.usable_flow(&flow)? {
            return Ok(Some(Prediction {
                vip,
                vip_index: u32::from(self.backend(v.backend)?.vip),
                flow,
                hash: flow_hash(&flow),
                maglev_backend: match vip {
                    Some((_, info)) => self.maglev(&info, &flow)?,
                    None => 0,
                },
                remembered: Some(v),
                new_flow: false,
            }));
        }
        // 2. The VIP.
        let Some((key, info)) = vip else {
            return Ok(None);
        };
        // 3. A source-affinity VIP's per-client entry.
        if info.flags & VIP_F_HASH_SOURCE != 0 {
            flow = flow_key(&h, key.port, info.flags);
        }
        let maglev_backend = self.maglev(&info, &flow)?;
        let nat = maglev_backend != 0
            && self.backend(maglev_backend)?.mode != MODE_DSR
            && info.flags & VIP_F_HASH_SOURCE == 0;
        let remembered = if info.flags & VIP_F_HASH_SOURCE != 0 && !fresh {
            self.usable_flow(&flow)?
        } else if fresh && maglev_backend != 0 {
            // A retransmitted SYN: its own entry, on a backend that still keeps flows
            // (`START`). DSR and source affinity: `choose_backend`'s test of the entry it
            // failed to insert; NAT: `nat::establish`'s, of an open connection's entry on
            // another target.
            // A backend failing its checks keeps it only if (NAT) it has answered.
            match self.usable_flow(&flow)?.filter(|v| v.syn_seq == h.tcp_seq) {
                Some(v) if nat => {
                    let b = self.backend(v.backend)?;
                    let stays = v.state & FLOW_F_NAT != 0
                        && v.state & (CT_F_FIN | CT_F_RST) == 0
                        && v.backend != maglev_backend
                        && (b.admin & ADMIN_F_FAILING == 0 || self.answered(&h, &v, &b)?);
                    stays.then_some(v)
                }
                Some(v) if self.backend(v.backend)?.admin & ADMIN_F_FAILING == 0 => Some(v),
                _ => None,
            }
        } else {
            None
        };
        // 4. Maglev, and whether the packet counts as a new flow.
        let new_flow = remembered.is_none()
            && maglev_backend != 0
            && how & REMEMBER != 0
            && if fresh && nat {
                // `nat::establish`: the same target's open entry is kept, and new only
                // for another connection's SYN.
                let b = self.backend(maglev_backend)?;
                !self.flow(&flow)?.is_some_and(|v| {
                    v.state & FLOW_F_NAT != 0
                        && (v.backend, v.generation) == (maglev_backend, b.generation)
                        && v.state & (CT_F_FIN | CT_F_RST) == 0
                        && v.syn_seq == h.tcp_seq
                })
            } else if fresh {
                // `choose_backend`: anything but this SYN's own entry is replaced.
                true
            } else {
                how & COUNT_NEW != 0
            };
        // A retransmitted SYN is counted for the VIP its entry's backend names, as any
        // flow-table hit.
        let vip_index = match remembered {
            Some(v) if fresh => u32::from(self.backend(v.backend)?.vip),
            _ => info.index,
        };
        Ok(Some(Prediction {
            vip,
            vip_index,
            flow,
            hash: flow_hash(&flow),
            maglev_backend,
            remembered,
            new_flow,
        }))
    }

    /// The kernel's `select::find_vip`: the exact port, then (only when some VIP has port
    /// 0) the any-port VIP.
    fn find_vip(&self, f: &FlowKey) -> Result<Option<(VipKey, VipInfo)>, DataplaneError> {
        let mut key = VipKey {
            addr: f.dst,
            port: f.dport,
            proto: f.proto,
            family: f.family,
        };
        if let Some(v) = self.vip(&key)? {
            return Ok(Some((key, v)));
        }
        if self.config()?.flags & CFG_F_WILDCARD_VIPS == 0 {
            return Ok(None);
        }
        key.port = 0;
        Ok(self.vip(&key)?.map(|v| (key, v)))
    }

    /// The backend id the VIP's current Maglev table has for `flow` (0: none, or an unused
    /// slot the kernel refuses).
    fn maglev(&self, vip: &VipInfo, flow: &FlowKey) -> Result<u32, DataplaneError> {
        let m = self.limits().maglev_size;
        let id = self.table_entry(vip.table, maglev_slot(flow_hash(flow), m))?;
        if id == 0 || self.backend(id)?.state == lb_common::BACKEND_UNUSED {
            return Ok(0);
        }
        Ok(id)
    }

    /// `nat::answered`: whether NAT target `b` has answered the connection of `h` whose
    /// forward entry is `v` (its reverse entry records a reply).
    fn answered(&self, h: &Headers, v: &FlowValue, b: &Backend) -> Result<bool, DataplaneError> {
        let dst = if b.mode == MODE_NAT_CLIENT {
            h.src
        } else {
            self.snat_slot(u32::from(v.nat_slot))?
        };
        let key = FlowKey {
            src: b.addr,
            dst,
            sport: if b.port != 0 { b.port } else { h.dport },
            dport: v.nat_port,
            proto: h.proto,
            family: h.family,
            reserved: [0; 2],
        };
        Ok(self
            .nat_reverse(&key)?
            .is_some_and(|r| r.state & CT_F_REPLIED != 0))
    }

    /// The flow-table entry of `key`, if there is one and its backend still keeps flows.
    fn usable_flow(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        Ok(match self.flow(key)? {
            Some(v) if self.backend(v.backend)?.keeps_flow(v.generation) => Some(v),
            _ => None,
        })
    }
}
