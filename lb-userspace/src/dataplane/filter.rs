//! The address filter (`VIP_FILTER`): three bits per address (`lb_common::hash`), derived
//! from the maps: the VIP bit from `VIPS` and `VIP_ADDRS`, the NAT bit from `SNAT_POOL`,
//! the target bit (and every word's `FILTER_F_TARGETS`) from the client-preserving backends
//! in `BACKENDS`. It is rebuilt whole at every load, so neither pins made before it
//! existed nor a crash between two writes can hide an address; after that each write that
//! changes one of its sources refreshes the words concerned.

use std::collections::BTreeMap;

use aya::maps::Array;
use lb_common::{
    Addr, BACKEND_UNUSED, Backend, MODE_NAT_CLIENT, SNAT_SLOTS,
    hash::{
        FILTER_F_TARGETS, FILTER_NAT, FILTER_TARGET, FILTER_VIP, VIP_FILTER_WORDS, filter_position,
    },
};

use super::{Balancer, DataplaneError, Result, typed};

/// The filter's sources that are not VIPs, as written to the maps.
#[derive(Debug, Default)]
pub(super) struct Sources {
    /// SNAT slot -> address.
    pub snat: BTreeMap<u32, Addr>,
    /// Backend id -> address, for client-preserving targets in use.
    pub targets: BTreeMap<u32, Addr>,
}

impl Balancer {
    /// Reads the SNAT pool and the client-preserving backends from the maps (at load).
    pub(super) fn read_filter_sources(&mut self) -> Result<()> {
        let mut sources = Sources::default();
        for slot in 0..SNAT_SLOTS {
            let a = self.snat_slot(slot)?;
            if a != [0; 16] {
                sources.snat.insert(slot, a);
            }
        }
        for id in 1..self.limits.max_backends {
            let b = self.backend(id)?;
            if b.state != BACKEND_UNUSED && b.mode == MODE_NAT_CLIENT {
                sources.targets.insert(id, b.addr);
            }
        }
        self.filter = sources;
        Ok(())
    }

    /// Every address the filter must let through, with its bit.
    fn filter_entries(&self) -> Result<Vec<(Addr, u32)>> {
        let mut all: Vec<(Addr, u32)> = self
            .vips()?
            .iter()
            .map(|(k, _)| (k.addr, FILTER_VIP))
            .collect();
        all.extend(
            self.vip_addresses()?
                .iter()
                .map(|(k, _)| (k.addr, FILTER_VIP)),
        );
        all.extend(self.filter.snat.values().map(|a| (*a, FILTER_NAT)));
        all.extend(self.filter.targets.values().map(|a| (*a, FILTER_TARGET)));
        Ok(all)
    }

    /// The filter word `word` as its sources say.
    fn filter_word(&self, entries: &[(Addr, u32)], word: u32) -> u64 {
        let flag = if self.filter.targets.is_empty() {
            0
        } else {
            FILTER_F_TARGETS
        };
        entries
            .iter()
            .filter_map(|(a, bit)| {
                let (w, shift) = filter_position(a);
                (w == word).then_some(1u64 << (shift + bit))
            })
            .fold(flag, |w, b| w | b)
    }

    /// Sets the filter words of `addrs` from their sources (after one of them changed).
    /// The controller adds an address's source after what it lets through is complete
    /// and removes it before taking that apart, so the filter is never ahead of the maps.
    pub(super) fn refresh_filter(&mut self, addrs: &[Addr]) -> Result<()> {
        let entries = self.filter_entries()?;
        for a in addrs {
            let (word, _) = filter_position(a);
            let value = self.filter_word(&entries, word);
            self.set_vip_filter_word(word, value)?;
        }
        Ok(())
    }

    /// Writes the whole filter from the maps (at load, and when `FILTER_F_TARGETS` flips).
    pub(super) fn rebuild_vip_filter(&mut self) -> Result<()> {
        let entries = self.filter_entries()?;
        let current = self.vip_filter()?;
        for i in 0..VIP_FILTER_WORDS {
            let w = self.filter_word(&entries, i);
            if current.get(i as usize) != Some(&w) {
                self.set_vip_filter_word(i, w)?;
            }
        }
        Ok(())
    }

    /// Follows a write of `BACKENDS[id]`: a client-preserving target in use has its filter
    /// bit (packets from it may be NAT replies).
    pub(super) fn backend_written(&mut self, id: u32, b: &Backend) -> Result<()> {
        let now = (b.state != BACKEND_UNUSED && b.mode == MODE_NAT_CLIENT).then_some(b.addr);
        let was = self.filter.targets.get(&id).copied();
        if was == now {
            return Ok(());
        }
        let flag_before = self.filter.targets.is_empty();
        match now {
            Some(a) => self.filter.targets.insert(id, a),
            None => self.filter.targets.remove(&id),
        };
        if flag_before != self.filter.targets.is_empty() {
            return self.rebuild_vip_filter();
        }
        let addrs: Vec<Addr> = was.into_iter().chain(now).collect();
        self.refresh_filter(&addrs)
    }

    fn set_vip_filter_word(&mut self, word: u32, value: u64) -> Result<()> {
        let mut a: Array<_, u64> = typed("VIP_FILTER", self.map_mut("VIP_FILTER"))?;
        a.set(word, value, 0).map_err(|source| DataplaneError::Map {
            map: "VIP_FILTER",
            source,
        })
    }

    /// Whether the filter lets packets to `addr` on to the VIP lookups (as the kernel reads
    /// it).
    pub fn may_be_vip(&self, addr: &Addr) -> Result<bool> {
        let (word, shift) = filter_position(addr);
        let a: Array<_, u64> = typed("VIP_FILTER", self.map("VIP_FILTER"))?;
        let w = a.get(&word, 0).map_err(|source| DataplaneError::Map {
            map: "VIP_FILTER",
            source,
        })?;
        Ok((w >> (shift + FILTER_VIP)) & 1 != 0)
    }

    /// The filter's words.
    pub fn vip_filter(&self) -> Result<Vec<u64>> {
        let a: Array<_, u64> = typed("VIP_FILTER", self.map("VIP_FILTER"))?;
        a.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DataplaneError::Map {
                map: "VIP_FILTER",
                source,
            })
    }
}
