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
    pub fn predict(&self, frame: &[u8]) -> Result<Option<Prediction>, DataplaneError> {
        let Parsed::Ip(h) = parse(frame) else {
            return Ok(None);
        };
        if h.l4 != L4::Ports {
            return Ok(None);
        }
        let mut vip_key = VipKey {
            addr: h.dst,
            port: h.dport,
            proto: h.proto,
            family: h.family,
        };
        let vip = match self.vip(&vip_key)? {
            Some(v) => v,
            None => {
                vip_key.port = 0;
                match self.vip(&vip_key)? {
                    Some(v) => v,
                    None => return Ok(None),
                }
            }
        };
        let flow = flow_key(&h, vip_key.port, vip.flags);
        let hash = flow_hash(&flow);
        let m = self.limits().maglev_size;
        let maglev_backend = self.table_entry(vip.table, maglev_slot(hash, m))?;
        let remembered = match self.flow(&flow)? {
            Some(v) => {
                let b = self.backend(v.backend)?;
                b.keeps_flow(v.generation).then_some(v)
            }
            None => None,
        };
        Ok(Some(Prediction {
            vip_key,
            vip,
            flow,
            hash,
            maglev_backend,
            remembered,
        }))
    }
}
