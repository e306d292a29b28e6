//! The backend-side decapsulator: loading, the addresses it decapsulates for, attaching.
//!
//! A backend runs `xlb decap --iface IF`: the program strips the outer header of packets a
//! balancer encapsulated to one of the interface's addresses, and the kernel then delivers
//! the original packet to the VIP configured on loopback.

use std::net::IpAddr;

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, links::FdLink},
};
use lb_common::{VipKey, addr_to_map, stats::decap};

use crate::programs;

/// Name of the decapsulator's XDP program in its object.
pub const PROGRAM: &str = "xlb_decap";

#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error("loading the decapsulator failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the decapsulator was rejected or could not be attached: {0}")]
    Program(#[from] ProgramError),
    #[error("the decapsulator's attachment is not a BPF link (kernel too old?): {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The loaded decapsulator.
pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    pub fn load() -> Result<Self, DecapError> {
        let mut ebpf = Ebpf::load(programs::DECAP)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        crate::dataplane::load_program(prog)?;
        Ok(Self { ebpf })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the decapsulator object has its program")
    }

    /// Decapsulates packets whose outer destination is `addr`.
    pub fn add_local(&mut self, addr: IpAddr) -> Result<(), DecapError> {
        let (a, family) = addr_to_map(addr);
        let key = VipKey {
            addr: a,
            port: 0,
            proto: 0,
            family,
        };
        let map = self
            .ebpf
            .map_mut("LOCAL_ADDRS")
            .expect("decap object has LOCAL_ADDRS");
        let mut m: HashMap<_, VipKey, u32> =
            HashMap::try_from(map).map_err(|source| DecapError::Map {
                map: "LOCAL_ADDRS",
                source,
            })?;
        m.insert(key, 1, 0).map_err(|source| DecapError::Map {
            map: "LOCAL_ADDRS",
            source,
        })
    }

    /// Attaches to interface `ifindex`; the returned link keeps it attached (pin it to
    /// outlive this process).
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<FdLink, DecapError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .expect("decap object has its program")
            .try_into()?;
        let id = prog.attach_to_if_index(ifindex, mode)?;
        let link = prog.take_link(id)?;
        Ok(FdLink::try_from(link)?)
    }

    /// The counters (`lb_common::stats::decap`), summed over CPUs.
    pub fn stats(&self) -> Result<Vec<u64>, DecapError> {
        let map = self
            .ebpf
            .map("DECAP_STATS")
            .expect("decap object has DECAP_STATS");
        let a: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| DecapError::Map {
                map: "DECAP_STATS",
                source,
            })?;
        (0..decap::COUNT)
            .map(|i| {
                a.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|source| DecapError::Map {
                        map: "DECAP_STATS",
                        source,
                    })
            })
            .collect()
    }

    /// Runs the program once on `packet` (see [`crate::dataplane::test_run`]).
    pub fn test_run(&self, packet: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        crate::dataplane::test_run(self.program(), packet, 0)
    }
}
