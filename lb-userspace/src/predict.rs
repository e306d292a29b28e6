//! Predicting in userspace what the data plane will do with a packet.
//!
//! Built from the same `lb-common` functions the XDP program runs (parser, flow key, flow
//! hash, slot reduction) and the live maps, so tests and operators can ask "which backend
//! takes this packet?" and get the kernel's answer without sending it.

use lb_common::{
    FlowKey, FlowValue, VipInfo, VipKey,
    hash::{flow_hash, flow_key, maglev_slot},
    parse::{L4, Parsed, parse},
};

use crate::dataplane::{Balancer, DataplaneError};

/// What the balancer does with a packet addressed to a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// The VIP that matched (its port is 0 for an any-port VIP).
    pub vip_key: VipKey,
    pub vip: VipInfo,
    /// The flow-table key of the packet.
    pub flow: FlowKey,
    /// The flow hash, which also seeds the outer IPv6 flow label.
    pub hash: u32,
    /// The backend Maglev picks for a new flow (0: none).
    pub maglev_backend: u32,
    /// The flow-table entry, when it exists and its backend still keeps flows.
    pub remembered: Option<FlowValue>,
}

impl Prediction {
    /// The backend the packet goes to: the remembered one, else Maglev's (0: dropped).
    pub fn backend(&self) -> u32 {
        self.remembered.map_or(self.maglev_backend, |v| v.backend)
    }
}

impl Balancer {
    /// What the program will do with `frame`: `None` when it is not VIP traffic (the
    /// program passes it untouched), else the VIP, the flow and the backend.
    ///
    /// In the kernel's order: the address filter, the flow table with the packet's
    /// 5-tuple, then the VIP and (for a source-affinity VIP) its own flow key.
    pub fn predict(&self, frame: &[u8]) -> Result<Option<Prediction>, DataplaneError> {
        let Parsed::Ip(h) = parse(frame) else {
            return Ok(None);
        };
        if h.l4 != L4::Ports || !self.may_be_vip(&h.dst)? {
            return Ok(None);
        }
        let five = flow_key(&h, h.dport, 0);
        let hit = self.usable_flow(&five)?;
        let mut vip_key = VipKey {
            addr: h.dst,
            port: h.dport,
            proto: h.proto,
            family: h.family,
        };
        let mut vip = self.vip(&vip_key)?;
        if vip.is_none() {
            vip_key.port = 0;
            vip = self.vip(&vip_key)?;
        }
        let Some(vip) = vip else {
            // The VIP is gone and its backend ids are not released yet (the controller
            // does that right after): the kernel still follows a remembered flow.
            let Some(v) = hit else { return Ok(None) };
            vip_key.port = h.dport;
            return Ok(Some(Prediction {
                vip_key,
                vip: VipInfo {
                    index: self.backend(v.backend)?.vip,
                    ..VipInfo::default()
                },
                flow: five,
                hash: flow_hash(&five),
                maglev_backend: 0,
                remembered: hit,
            }));
        };
        let key = flow_key(&h, vip_key.port, vip.flags);
        let m = self.limits().maglev_size;
        let maglev_backend = self.table_entry(vip.table, maglev_slot(flow_hash(&key), m))?;
        let (flow, remembered) = match hit {
            Some(v) => (five, Some(v)),
            None if key != five => (key, self.usable_flow(&key)?),
            None => (key, None),
        };
        Ok(Some(Prediction {
            vip_key,
            vip,
            flow,
            hash: flow_hash(&flow),
            maglev_backend,
            remembered,
        }))
    }

    /// The flow-table entry of `key`, if there is one and its backend still keeps flows.
    fn usable_flow(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        Ok(match self.flow(key)? {
            Some(v) if self.backend(v.backend)?.keeps_flow(v.generation) => Some(v),
            _ => None,
        })
    }
}
