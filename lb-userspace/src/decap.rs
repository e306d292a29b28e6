//! The backend-side decapsulator: loading, the addresses it decapsulates for, attaching.
//!
//! A backend runs `xlb decap --iface IF`: the program strips the outer header of packets a
//! balancer encapsulated to one of the interface's addresses, and the kernel then delivers
//! the original packet to the VIP configured on loopback.
//!
//! Two hooks run the same decision: TC ingress (the default: it sees socket buffers after
//! GRO, so the interface and its peer keep their offloads, and traffic it does not
//! decapsulate pays one look at its headers per merged packet) and XDP (every frame before
//! the kernel builds a socket buffer; on a veth it turns segmentation offload off on the
//! peer, which costs a veth-connected host most of its TCP throughput).

use std::net::IpAddr;

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, Xdp, XdpMode,
        links::FdLink,
        tc::{TcAttachOptions, TcAttachType},
    },
};
use lb_common::{VipKey, addr_to_map, stats::decap};

use crate::programs;

/// Name of the decapsulator's XDP program in its object.
pub const PROGRAM: &str = "xlb_decap";

/// Name of its TC (ingress classifier) program.
pub const TC_PROGRAM: &str = "xlb_decap_tc";

/// Where the decapsulator runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TC ingress, as a TCX link (kernel 6.6 or later).
    Tc,
    /// XDP, in the given mode.
    Xdp(XdpMode),
}

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

/// The loaded decapsulator: both programs, which share its maps.
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
        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        crate::dataplane::load_retrying(|| tc.load())?;
        Ok(Self { ebpf })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the decapsulator object has its program")
    }

    pub fn tc_program(&self) -> &SchedClassifier {
        self.ebpf
            .program(TC_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the decapsulator object has its TC program")
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

    /// Attaches to interface `iface` (index `ifindex`) at `hook`; the returned link keeps
    /// it attached (pin it to outlive this process).
    pub fn attach(&mut self, iface: &str, ifindex: u32, hook: Hook) -> Result<FdLink, DecapError> {
        match hook {
            Hook::Xdp(mode) => {
                let prog: &mut Xdp = self
                    .ebpf
                    .program_mut(PROGRAM)
                    .expect("decap object has its program")
                    .try_into()?;
                let id = prog.attach_to_if_index(ifindex, mode)?;
                let link = prog.take_link(id)?;
                Ok(FdLink::try_from(link)?)
            }
            Hook::Tc => {
                let prog: &mut SchedClassifier = self
                    .ebpf
                    .program_mut(TC_PROGRAM)
                    .expect("decap object has its TC program")
                    .try_into()?;
                let id = prog.attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(Default::default()),
                )?;
                let link = prog.take_link(id)?;
                Ok(FdLink::try_from(link)?)
            }
        }
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

    /// Runs the XDP program once on `packet` (see [`crate::dataplane::test_run`]).
    pub fn test_run(&self, packet: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        crate::dataplane::test_run(self.program(), packet, 0)
    }

    /// Runs the TC program once on `packet`, a frame as the kernel builds its socket
    /// buffer (`BPF_PROG_TEST_RUN`): its action (`TC_ACT_*`) and the frame it leaves.
    pub fn test_run_tc(&self, packet: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; packet.len() + 256];
        let r = self.tc_program().test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}
