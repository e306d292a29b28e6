//! Carrying out a plan: the only code that writes the balancer's maps. It decides
//! nothing; the order of the steps is the planner's.

use std::{net::IpAddr, sync::Arc};

use lb_common::{Addr, Backend, DataplaneConfig, FlowKey, VipInfo, VipKey, addr_to_map};

use crate::dataplane::{Balancer, DataplaneError, Limits};

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `CONFIG[0]`.
    SetConfig(DataplaneConfig),
    /// Zero the counters of a VIP index given to a new VIP.
    ResetVipStats(u32),
    /// Zero the counters of a backend id given to a new backend.
    ResetBackendStats(u32),
    /// `BACKENDS[id]`.
    SetBackend(u32, Backend),
    /// Maglev table `table` (not in use by its VIP when written).
    WriteTable(u32, Arc<Vec<u32>>),
    /// `VIPS[key]`: add the VIP, or switch its table or flags.
    SetVip(VipKey, VipInfo),
    RemoveVip(VipKey),
    /// `VIP_ADDRS[address]`: how many VIPs the address has (0 removes it); the address
    /// filter follows it.
    SetVipAddress(IpAddr, u32),
    /// `SNAT_POOL[slot]` (all zero: empty); the address filter follows it.
    SetSnat(u32, Addr),
    /// Ends a NAT connection (the sweeper): its forward entry `conn` if it is still the
    /// connection's, then its reverse entry `reply`, which frees the port.
    RemoveNat {
        reply: FlowKey,
        conn: Option<FlowKey>,
    },
}

/// The maps as the controller uses them: written by [`execute`], read back when a
/// restarted daemon adopts what runs ([`super::adopt`]). [`Balancer`] is the real thing;
/// tests use an in-memory one.
pub trait Maps {
    type Error: std::error::Error + Send + Sync + 'static;

    fn limits(&self) -> Limits;
    fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<(), Self::Error>;
    fn config(&self) -> Result<DataplaneConfig, Self::Error>;
    fn reset_vip_stats(&mut self, index: u32) -> Result<(), Self::Error>;
    fn reset_backend_stats(&mut self, id: u32) -> Result<(), Self::Error>;
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), Self::Error>;
    fn backend(&self, id: u32) -> Result<Backend, Self::Error>;
    fn write_table(&mut self, table: u32, entries: &[u32]) -> Result<(), Self::Error>;
    fn read_table(&self, table: u32) -> Result<Vec<u32>, Self::Error>;
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), Self::Error>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), Self::Error>;
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, Self::Error>;
    fn set_vip_address(&mut self, key: &VipKey, count: u32) -> Result<(), Self::Error>;
    fn vip_addresses(&self) -> Result<Vec<(VipKey, u32)>, Self::Error>;
    fn set_snat(&mut self, slot: u32, addr: &Addr) -> Result<(), Self::Error>;
    fn snat(&self, slot: u32) -> Result<Addr, Self::Error>;
    fn remove_nat(&mut self, reply: &FlowKey, conn: Option<&FlowKey>) -> Result<(), Self::Error>;
}

/// The `VIP_ADDRS` key of an address.
pub fn address_key(addr: IpAddr) -> VipKey {
    let (a, family) = addr_to_map(addr);
    VipKey {
        addr: a,
        port: 0,
        proto: 0,
        family,
    }
}

/// Writes `steps` in order; stops at the first failure (the caller re-reads the maps).
pub fn execute<M: Maps>(maps: &mut M, steps: &[Step]) -> Result<(), M::Error> {
    for step in steps {
        match step {
            Step::SetConfig(c) => maps.set_config(c)?,
            Step::ResetVipStats(i) => maps.reset_vip_stats(*i)?,
            Step::ResetBackendStats(id) => maps.reset_backend_stats(*id)?,
            Step::SetBackend(id, b) => maps.set_backend(*id, b)?,
            Step::WriteTable(t, entries) => maps.write_table(*t, entries)?,
            Step::SetVip(k, info) => maps.set_vip(k, info)?,
            Step::RemoveVip(k) => maps.remove_vip(k)?,
            Step::SetVipAddress(a, n) => maps.set_vip_address(&address_key(*a), *n)?,
            Step::SetSnat(slot, a) => maps.set_snat(*slot, a)?,
            Step::RemoveNat { reply, conn } => maps.remove_nat(reply, conn.as_ref())?,
        }
    }
    Ok(())
}

impl Maps for Balancer {
    type Error = DataplaneError;

    fn limits(&self) -> Limits {
        Balancer::limits(self)
    }
    fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        Balancer::set_config(self, cfg)
    }
    fn config(&self) -> Result<DataplaneConfig, DataplaneError> {
        Balancer::config(self)
    }
    fn reset_vip_stats(&mut self, index: u32) -> Result<(), DataplaneError> {
        Balancer::reset_vip_stats(self, index)
    }
    fn reset_backend_stats(&mut self, id: u32) -> Result<(), DataplaneError> {
        Balancer::reset_backend_stats(self, id)
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), DataplaneError> {
        Balancer::set_backend(self, id, b)
    }
    fn backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        Balancer::backend(self, id)
    }
    fn write_table(&mut self, table: u32, entries: &[u32]) -> Result<(), DataplaneError> {
        Balancer::write_table(self, table, entries)
    }
    fn read_table(&self, table: u32) -> Result<Vec<u32>, DataplaneError> {
        Balancer::read_table(self, table)
    }
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), DataplaneError> {
        Balancer::set_vip(self, key, info)
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        Balancer::remove_vip(self, key)
    }
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, DataplaneError> {
        Balancer::vips(self)
    }
    fn set_vip_address(&mut self, key: &VipKey, count: u32) -> Result<(), DataplaneError> {
        Balancer::set_vip_address(self, key, count)
    }
    fn vip_addresses(&self) -> Result<Vec<(VipKey, u32)>, DataplaneError> {
        Balancer::vip_addresses(self)
    }
    fn set_snat(&mut self, slot: u32, addr: &Addr) -> Result<(), DataplaneError> {
        Balancer::set_snat_slot(self, slot, addr)
    }
    fn snat(&self, slot: u32) -> Result<Addr, DataplaneError> {
        Balancer::snat_slot(self, slot)
    }
    fn remove_nat(
        &mut self,
        reply: &FlowKey,
        conn: Option<&FlowKey>,
    ) -> Result<(), DataplaneError> {
        if let Some(c) = conn {
            Balancer::remove_flow(self, c)?;
        }
        Balancer::remove_nat_reverse(self, reply)
    }
}

/// Maps in memory, for tests of the planner and the engine without root.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryMaps {
    pub limits: Limits,
    pub config: DataplaneConfig,
    pub backends: Vec<Backend>,
    pub tables: Vec<Vec<u32>>,
    pub vips: std::collections::BTreeMap<VipKey, VipInfo>,
    pub vip_addresses: std::collections::BTreeMap<VipKey, u32>,
    pub snat: Vec<Addr>,
    /// NAT connections removed (reply keys), in order.
    pub nat_removed: Vec<FlowKey>,
    /// Every write so far, in order.
    pub writes: usize,
    /// Fail (as a crash would stop) once this many writes have been made.
    pub fail_after: Option<usize>,
}

/// The error of [`MemoryMaps`]: the simulated crash.
#[derive(Debug, thiserror::Error)]
#[error("simulated failure after {0} writes")]
pub struct Stopped(pub usize);

impl MemoryMaps {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            config: DataplaneConfig::default(),
            backends: vec![Backend::default(); limits.max_backends as usize],
            tables: vec![vec![0; limits.maglev_size as usize]; 2 * limits.max_vips as usize],
            vips: Default::default(),
            vip_addresses: Default::default(),
            snat: vec![[0; 16]; lb_common::SNAT_SLOTS as usize],
            nat_removed: Vec::new(),
            writes: 0,
            fail_after: None,
        }
    }

    fn write(&mut self) -> Result<(), Stopped> {
        if self.fail_after.is_some_and(|n| self.writes >= n) {
            return Err(Stopped(self.writes));
        }
        self.writes += 1;
        Ok(())
    }
}

impl Maps for MemoryMaps {
    type Error = Stopped;

    fn limits(&self) -> Limits {
        self.limits
    }
    fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<(), Stopped> {
        self.write()?;
        self.config = *cfg;
        Ok(())
    }
    fn config(&self) -> Result<DataplaneConfig, Stopped> {
        Ok(self.config)
    }
    fn reset_vip_stats(&mut self, _: u32) -> Result<(), Stopped> {
        self.write()
    }
    fn reset_backend_stats(&mut self, _: u32) -> Result<(), Stopped> {
        self.write()
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), Stopped> {
        self.write()?;
        self.backends[id as usize] = *b;
        Ok(())
    }
    fn backend(&self, id: u32) -> Result<Backend, Stopped> {
        Ok(self.backends[id as usize])
    }
    fn write_table(&mut self, table: u32, entries: &[u32]) -> Result<(), Stopped> {
        self.write()?;
        self.tables[table as usize] = entries.to_vec();
        Ok(())
    }
    fn read_table(&self, table: u32) -> Result<Vec<u32>, Stopped> {
        Ok(self.tables[table as usize].clone())
    }
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), Stopped> {
        self.write()?;
        self.vips.insert(*key, *info);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), Stopped> {
        self.write()?;
        self.vips.remove(key);
        Ok(())
    }
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, Stopped> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_vip_address(&mut self, key: &VipKey, count: u32) -> Result<(), Stopped> {
        self.write()?;
        if count == 0 {
            self.vip_addresses.remove(key);
        } else {
            self.vip_addresses.insert(*key, count);
        }
        Ok(())
    }
    fn vip_addresses(&self) -> Result<Vec<(VipKey, u32)>, Stopped> {
        Ok(self.vip_addresses.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_snat(&mut self, slot: u32, addr: &Addr) -> Result<(), Stopped> {
        self.write()?;
        self.snat[slot as usize] = *addr;
        Ok(())
    }
    fn snat(&self, slot: u32) -> Result<Addr, Stopped> {
        Ok(self.snat[slot as usize])
    }
    fn remove_nat(&mut self, reply: &FlowKey, _: Option<&FlowKey>) -> Result<(), Stopped> {
        self.write()?;
        self.nat_removed.push(*reply);
        Ok(())
    }
}
