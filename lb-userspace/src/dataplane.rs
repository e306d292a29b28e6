//! Typed access to the balancer's BPF maps, and loading of the program.
//!
//! [`Balancer`] owns the loaded `xlb_balancer` program and its maps. It can create the maps
//! fresh or re-open pinned ones (a daemon restart), checking that pinned maps have the
//! layout this build expects. The Maglev tables are written through a shared memory mapping
//! of the `MAGLEV` array: a whole table is one `memcpy`, not M system calls.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    ptr::NonNull,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    Backend, BackendStats, BenchTemplate, DataplaneConfig, FlowKey, FlowValue, NatReverse,
    TraceFilter, VipInfo, VipKey, VipStats, hash::VIP_FILTER_WORDS, stats::GLOBAL_SLOTS,
};

use crate::programs;

/// Name of the balancer's XDP program in its object.
pub const PROGRAM: &str = "xlb_balancer";

mod filter;
mod nat;
pub use nat::NatEntry;

/// Every map of the balancer, as named in the object (and in the pin directory).
pub const MAPS: [&str; 12] = [
    "VIPS",
    "VIP_ADDRS",
    "VIP_FILTER",
    "BACKENDS",
    "MAGLEV",
    "FLOWS",
    "CONFIG",
    "GLOBAL_STATS",
    "VIP_STATS",
    "BACKEND_STATS",
    "NAT_REV",
    "SNAT_POOL",
];

/// Sizes fixed when the maps are created. Changing any of them needs fresh maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// VIPs the maps can hold (each owns two Maglev tables).
    pub max_vips: u32,
    /// Backend ids (id 0 is never used, so this many minus one backends).
    pub max_backends: u32,
    /// Flow-table entries; the least recently used flow is evicted beyond that.
    pub flow_table_entries: u32,
    /// Maglev table size M (a prime).
    pub maglev_size: u32,
    /// NAT connections the tracking table holds (`NAT_REV`; their forward halves are in
    /// the flow table).
    #[serde(default = "default_nat_entries")]
    pub nat_table_entries: u32,
}

fn default_nat_entries() -> u32 {
    Limits::default().nat_table_entries
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_vips: 64,
            max_backends: 16_384,
            flow_table_entries: 1_000_000,
            maglev_size: 65_537,
            nat_table_entries: 262_144,
        }
    }
}

impl Limits {
    /// Backend ids in the Maglev tables: two tables of M ids per VIP.
    pub fn maglev_ids(&self) -> Option<u32> {
        self.max_vips.checked_mul(2)?.checked_mul(self.maglev_size)
    }

    /// Elements of the `MAGLEV` array (two ids each).
    pub fn maglev_entries(&self) -> Option<u32> {
        Some(self.maglev_ids()?.div_ceil(2))
    }

    /// (type, key size, value size, max entries, flags) each map must have.
    fn expected(&self, map: &str) -> (u32, u32, u32, u32) {
        use std::mem::size_of as s;
        let (k, v, n) = match map {
            "VIPS" => (s::<VipKey>(), s::<VipInfo>(), self.max_vips),
            "VIP_ADDRS" => (s::<VipKey>(), s::<u32>(), self.max_vips),
            "VIP_FILTER" => (s::<u32>(), s::<u64>(), VIP_FILTER_WORDS),
            "BACKENDS" => (s::<u32>(), s::<Backend>(), self.max_backends),
            "MAGLEV" => (
                s::<u32>(),
                s::<[u32; 2]>(),
                self.maglev_entries().unwrap_or(0),
            ),
            "FLOWS" => (s::<FlowKey>(), s::<FlowValue>(), self.flow_table_entries),
            "CONFIG" => (s::<u32>(), s::<DataplaneConfig>(), 1),
            "GLOBAL_STATS" => (s::<u32>(), s::<u64>(), GLOBAL_SLOTS),
            "VIP_STATS" => (s::<u32>(), s::<VipStats>(), self.max_vips),
            "BACKEND_STATS" => (s::<u32>(), s::<BackendStats>(), self.max_backends),
            "NAT_REV" => (s::<FlowKey>(), s::<NatReverse>(), self.nat_table_entries),
            "SNAT_POOL" => (
                s::<u32>(),
                s::<lb_common::SnatAddr>(),
                lb_common::SNAT_SLOTS,
            ),
            _ => (0, 0, 0),
        };
        (k as u32, v as u32, n, 0)
    }
}

/// Errors of loading the balancer and of map access.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("packet tracing: {0}")]
    Trace(String),
    #[error("the Maglev tables of {max_vips} VIPs of {maglev_size} entries exceed 2^32 entries")]
    TooLarge { max_vips: u32, maglev_size: u32 },
    #[error(
        "pinned map {path} was made with a different layout ({what}: pinned {pinned}, this \
         configuration needs {wanted}); restore the previous setting or run `xlb teardown` \
         to start from empty maps"
    )]
    IncompatiblePin {
        path: PathBuf,
        what: &'static str,
        pinned: u32,
        wanted: u32,
    },
    #[error("cannot read pinned map {path}: {source}")]
    PinRead {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP program was rejected: {0}")]
    Program(#[from] ProgramError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot duplicate a map's file descriptor: {0}")]
    Dup(std::io::Error),
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("mapping the Maglev tables into memory failed: {0}")]
    Mmap(std::io::Error),
    #[error("Maglev table {table} does not exist (the maps hold {tables} tables)")]
    NoSuchTable { table: u32, tables: u32 },
    #[error("a Maglev table has {got} entries; M is {want}")]
    TableSize { got: usize, want: usize },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The loaded balancer: program, maps, and the Maglev tables mapped into memory.
pub struct Balancer {
    ebpf: Ebpf,
    limits: Limits,
    tables: MaglevTables,
    /// What the address filter is derived from besides the VIP maps: the SNAT addresses
    /// and the targets of client-preserving VIPs (`filter.rs`), as written to the maps.
    filter: filter::Sources,
}

impl Balancer {
    /// Loads the program with maps of the given sizes. With `pin_dir`, maps already pinned
    /// there are re-opened (after checking their layout) and new ones are pinned there.
    pub fn load(limits: Limits, pin_dir: Option<&Path>) -> Result<Self> {
        let entries = limits.maglev_entries().ok_or(DataplaneError::TooLarge {
            max_vips: limits.max_vips,
            maglev_size: limits.maglev_size,
        })?;
        let pins: Vec<(&'static str, PathBuf)> = match pin_dir {
            Some(dir) => MAPS.iter().map(|m| (*m, dir.join(m))).collect(),
            None => Vec::new(),
        };
        for (map, path) in &pins {
            if path.exists() {
                check_pin(path, limits.expected(map))?;
            }
        }
        let mut loader = EbpfLoader::new();
        loader
            .override_global("MAGLEV_SIZE", &limits.maglev_size, true)
            .map_max_entries("VIPS", limits.max_vips)
            .map_max_entries("VIP_ADDRS", limits.max_vips)
            .map_max_entries("BACKENDS", limits.max_backends)
            .map_max_entries("MAGLEV", entries)
            .map_max_entries("FLOWS", limits.flow_table_entries)
            .map_max_entries("VIP_STATS", limits.max_vips)
            .map_max_entries("BACKEND_STATS", limits.max_backends)
            .map_max_entries("NEXT_HOPS", limits.max_backends)
            .map_max_entries("NAT_REV", limits.nat_table_entries);
        for (map, path) in &pins {
            loader.map_pin_path(map, path.as_path());
        }
        let mut ebpf = loader.load(programs::BALANCER)?;
        let program: &mut Xdp = program_mut(&mut ebpf)?;
        load_program(program)?;
        let tables = MaglevTables::map(&ebpf, limits.maglev_size, entries * 2)?;
        let mut lb = Self {
            ebpf,
            limits,
            tables,
            filter: filter::Sources::default(),
        };
        lb.read_filter_sources()?;
        // Derived from VIP_ADDRS, so it is made right here whatever was pinned (maps pinned
        // by a version without the filter included) before the program can be attached.
        lb.rebuild_vip_filter()?;
        Ok(lb)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The XDP program, to attach it or test-run it.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the balancer object has its program, loaded by `load`")
    }

    /// Another program of the balancer's object (`xlb_balancer_bench`, `xlb_bench_restore`),
    /// loaded on first use; for benchmarks. It shares the balancer's maps.
    pub fn extra_program(&mut self, name: &str) -> Result<&Xdp> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        if p.fd().is_err() {
            load_program(p)?;
        }
        Ok(p)
    }

    /// A program of the balancer's object loaded with [`Balancer::extra_program`].
    pub fn program_named(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .expect("a program of the balancer object")
    }

    /// Sets the frame the benchmark entry point restores before each run: its length and
    /// its L2 header (14 bytes, or 18 with a VLAN tag).
    pub fn set_bench_template(&mut self, frame: &[u8]) -> Result<()> {
        let l2_len = if frame.len() >= 18
            && (frame[12..14] == [0x81, 0x00] || frame[12..14] == [0x88, 0xa8])
        {
            18
        } else {
            14
        };
        let mut t = BenchTemplate {
            len: frame.len() as u32,
            l2_len: l2_len as u32,
            l2: [0; 24],
        };
        let n = l2_len.min(frame.len());
        t.l2[..n].copy_from_slice(&frame[..n]);
        let mut a: Array<_, BenchTemplate> = typed(
            "BENCH",
            self.ebpf
                .map_mut("BENCH")
                .expect("the balancer object has BENCH"),
        )?;
        a.set(0, t, 0).map_err(|source| DataplaneError::Map {
            map: "BENCH",
            source,
        })
    }

    /// Takes the ring buffer on which the data plane reports next hops without a resolved
    /// MAC address (`lb_common::NeighbourEvent`), for `crate::neighbour::run`. `None` once
    /// taken.
    pub fn take_neighbour_events(&mut self) -> Option<Result<RingBuf<MapData>>> {
        let map = self.ebpf.take_map("NEIGH_EVENTS")?;
        Some(
            RingBuf::try_from(map).map_err(|source| DataplaneError::Map {
                map: "NEIGH_EVENTS",
                source,
            }),
        )
    }

    /// A second handle to the `CONFIG` map (its descriptor duplicated), for a task that
    /// keeps the interface MAC up to date (`crate::neighbour::InterfaceMac`).
    pub fn config_map(&self) -> Result<Array<MapData, DataplaneConfig>> {
        let data: &MapData = match self.map("CONFIG") {
            aya::maps::Map::Array(d) => d,
            _ => unreachable!("CONFIG is an array"),
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(DataplaneError::Dup)?;
        let dup = MapData::from_fd(fd).map_err(|source| DataplaneError::Map {
            map: "CONFIG",
            source,
        })?;
        typed("CONFIG", aya::maps::Map::Array(dup))
    }

    /// Sets the MAC address of the balancer's interface (`DataplaneConfig::mac`): VIP
    /// packets in frames to another MAC are then dropped; all zero turns the check off.
    /// The other settings are left as they are.
    pub fn set_interface_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut cfg = self.config()?;
        if cfg.mac != mac {
            cfg.mac = mac;
            self.write_config(&cfg)?;
        }
        Ok(())
    }

    /// Removes a remembered flow (benchmarks measure the new-flow path with it).
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        let mut m: HashMap<_, FlowKey, FlowValue> = typed("FLOWS", self.map_mut("FLOWS"))?;
        ignore_missing(m.remove(key)).map_err(|source| DataplaneError::Map {
            map: "FLOWS",
            source,
        })
    }

    pub fn program_mut(&mut self) -> &mut Xdp {
        program_mut(&mut self.ebpf).expect("the balancer object has its program")
    }

    pub(crate) fn map(&self, name: &'static str) -> &aya::maps::Map {
        self.ebpf
            .map(name)
            .expect("the balancer object defines every map in MAPS")
    }

    pub(crate) fn map_mut(&mut self, name: &'static str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .expect("the balancer object defines every map in MAPS")
    }

    /// Writes the run-time settings, except the interface's MAC address, which stays what
    /// the map holds: it is the daemon's, from the interface (`set_interface_mac`), not the
    /// configuration's.
    pub fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<()> {
        let cfg = DataplaneConfig {
            mac: self.config()?.mac,
            ..*cfg
        };
        self.write_config(&cfg)
    }

    /// Takes the ring buffer of the data plane's trace records (aya-log's), read into
    /// `sink` by `crate::trace::run`. Fails once taken.
    pub fn take_trace_logger(
        &mut self,
        sink: crate::trace::Sink,
    ) -> Result<aya_log::EbpfLogger<crate::trace::Sink>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, sink)
            .map_err(|e| DataplaneError::Trace(e.to_string()))
    }

    /// Starts tracing the packets `filter` matches (the filter is written first), or with
    /// `None` stops.
    pub fn set_trace(&mut self, filter: Option<&TraceFilter>) -> Result<()> {
        if let Some(f) = filter {
            let mut a: Array<_, TraceFilter> = typed("TRACE", self.map_mut("TRACE"))?;
            a.set(0, f, 0).map_err(|source| DataplaneError::Map {
                map: "TRACE",
                source,
            })?;
        }
        // The program's `.bss` holds one u32, `XLB_TRACE` (lb-ebpf/src/trace.rs).
        let mut bss: Array<_, u32> = typed(".bss", self.map_mut(".bss"))?;
        bss.set(0, u32::from(filter.is_some()), 0)
            .map_err(|source| DataplaneError::Map {
                map: ".bss",
                source,
            })
    }

    fn write_config(&mut self, cfg: &DataplaneConfig) -> Result<()> {
        let mut a: Array<_, DataplaneConfig> = typed("CONFIG", self.map_mut("CONFIG"))?;
        a.set(0, cfg, 0).map_err(|source| DataplaneError::Map {
            map: "CONFIG",
            source,
        })
    }

    pub fn config(&self) -> Result<DataplaneConfig> {
        let a: Array<_, DataplaneConfig> = typed("CONFIG", self.map("CONFIG"))?;
        a.get(&0, 0).map_err(|source| DataplaneError::Map {
            map: "CONFIG",
            source,
        })
    }

    pub fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        let mut m: HashMap<_, VipKey, VipInfo> = typed("VIPS", self.map_mut("VIPS"))?;
        m.insert(key, info, 0)
            .map_err(|source| DataplaneError::Map {
                map: "VIPS",
                source,
            })
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let mut m: HashMap<_, VipKey, VipInfo> = typed("VIPS", self.map_mut("VIPS"))?;
        ignore_missing(m.remove(key)).map_err(|source| DataplaneError::Map {
            map: "VIPS",
            source,
        })
    }

    /// The VIP stored under `key`, if any.
    pub fn vip(&self, key: &VipKey) -> Result<Option<VipInfo>> {
        let m: HashMap<_, VipKey, VipInfo> = typed("VIPS", self.map("VIPS"))?;
        match m.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map {
                map: "VIPS",
                source,
            }),
        }
    }

    /// Every VIP in the map.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        let m: HashMap<_, VipKey, VipInfo> = typed("VIPS", self.map("VIPS"))?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DataplaneError::Map {
                map: "VIPS",
                source,
            })
    }

    /// Records how many VIPs use an address (`addr_key`: the address with port and protocol
    /// 0); 0 removes the entry.
    pub fn set_vip_address(&mut self, addr_key: &VipKey, count: u32) -> Result<()> {
        let mut m: HashMap<_, VipKey, u32> = typed("VIP_ADDRS", self.map_mut("VIP_ADDRS"))?;
        let r = if count == 0 {
            ignore_missing(m.remove(addr_key))
        } else {
            m.insert(addr_key, count, 0)
        };
        r.map_err(|source| DataplaneError::Map {
            map: "VIP_ADDRS",
            source,
        })?;
        self.refresh_filter(&[addr_key.addr])
    }

    pub fn vip_addresses(&self) -> Result<Vec<(VipKey, u32)>> {
        let m: HashMap<_, VipKey, u32> = typed("VIP_ADDRS", self.map("VIP_ADDRS"))?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DataplaneError::Map {
                map: "VIP_ADDRS",
                source,
            })
    }

    /// Writes `BACKENDS[id]`; the address filter follows a client-preserving target.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        let mut a: Array<_, Backend> = typed("BACKENDS", self.map_mut("BACKENDS"))?;
        a.set(id, backend, 0)
            .map_err(|source| DataplaneError::Map {
                map: "BACKENDS",
                source,
            })?;
        self.backend_written(id, backend)
    }

    pub fn backend(&self, id: u32) -> Result<Backend> {
        let a: Array<_, Backend> = typed("BACKENDS", self.map("BACKENDS"))?;
        a.get(&id, 0).map_err(|source| DataplaneError::Map {
            map: "BACKENDS",
            source,
        })
    }

    /// Writes Maglev table `table` (entries are backend ids; 0 = none) through the memory
    /// mapping. The data plane does not read the table until a VIP is switched to it.
    pub fn write_table(&mut self, table: u32, entries: &[u32]) -> Result<()> {
        self.tables.write(table, entries)
    }

    /// Reads Maglev table `table`.
    pub fn read_table(&self, table: u32) -> Result<Vec<u32>> {
        self.tables.read(table).map(<[u32]>::to_vec)
    }

    /// Entry `slot` of Maglev table `table`.
    pub fn table_entry(&self, table: u32, slot: u32) -> Result<u32> {
        Ok(self.tables.read(table)?[slot as usize])
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
        let m: HashMap<_, FlowKey, FlowValue> = typed("FLOWS", self.map("FLOWS"))?;
        match m.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map {
                map: "FLOWS",
                source,
            }),
        }
    }

    pub fn set_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<()> {
        let mut m: HashMap<_, FlowKey, FlowValue> = typed("FLOWS", self.map_mut("FLOWS"))?;
        m.insert(key, value, 0)
            .map_err(|source| DataplaneError::Map {
                map: "FLOWS",
                source,
            })
    }

    /// Every remembered flow (a full walk of the table; for tests and diagnostics).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let m: HashMap<_, FlowKey, FlowValue> = typed("FLOWS", self.map("FLOWS"))?;
        Ok(m.iter().filter_map(Result::ok).collect())
    }

    /// The global totals per action and per reason, summed over CPUs
    /// (`lb_common::stats::totals` indexes).
    pub fn global_stats(&self) -> Result<Vec<u64>> {
        let a: PerCpuArray<_, u64> = typed("GLOBAL_STATS", self.map("GLOBAL_STATS"))?;
        let mut slots = [0u64; GLOBAL_SLOTS as usize];
        for (i, n) in slots.iter_mut().enumerate() {
            *n = a
                .get(&(i as u32), 0)
                .map_err(|source| DataplaneError::Map {
                    map: "GLOBAL_STATS",
                    source,
                })?
                .iter()
                .sum();
        }
        Ok(lb_common::stats::totals(&slots).to_vec())
    }

    /// Counters of VIP `id`, summed over CPUs.
    pub fn vip_stats(&self, id: u32) -> Result<VipStats> {
        let a: PerCpuArray<_, VipStats> = typed("VIP_STATS", self.map("VIP_STATS"))?;
        let per_cpu = a.get(&id, 0).map_err(|source| DataplaneError::Map {
            map: "VIP_STATS",
            source,
        })?;
        Ok(per_cpu.iter().fold(VipStats::default(), |a, v| VipStats {
            packets: a.packets + v.packets,
            bytes: a.bytes + v.bytes,
            new_flows: a.new_flows + v.new_flows,
            flow_hits: a.flow_hits + v.flow_hits,
            flow_misses: a.flow_misses + v.flow_misses,
            midflow_misses: a.midflow_misses + v.midflow_misses,
            reply_packets: a.reply_packets + v.reply_packets,
            reply_bytes: a.reply_bytes + v.reply_bytes,
        }))
    }

    /// Counters of backend `id`, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        let a: PerCpuArray<_, BackendStats> = typed("BACKEND_STATS", self.map("BACKEND_STATS"))?;
        let per_cpu = a.get(&id, 0).map_err(|source| DataplaneError::Map {
            map: "BACKEND_STATS",
            source,
        })?;
        Ok(per_cpu
            .iter()
            .fold(BackendStats::default(), |a, v| BackendStats {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
                new_flows: a.new_flows + v.new_flows,
                reply_packets: a.reply_packets + v.reply_packets,
                reply_bytes: a.reply_bytes + v.reply_bytes,
            }))
    }

    /// Zeroes the counters of a backend id (when the id is given to a new backend).
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        let mut a: PerCpuArray<_, BackendStats> =
            typed("BACKEND_STATS", self.map_mut("BACKEND_STATS"))?;
        a.set(id, zeros()?, 0)
            .map_err(|source| DataplaneError::Map {
                map: "BACKEND_STATS",
                source,
            })
    }

    /// Zeroes the counters of a VIP id (when the id is given to a new VIP).
    pub fn reset_vip_stats(&mut self, id: u32) -> Result<()> {
        let mut a: PerCpuArray<_, VipStats> = typed("VIP_STATS", self.map_mut("VIP_STATS"))?;
        a.set(id, zeros()?, 0)
            .map_err(|source| DataplaneError::Map {
                map: "VIP_STATS",
                source,
            })
    }

    /// Runs the program once on `packet` through `BPF_PROG_TEST_RUN`, as if it had arrived
    /// on interface `ingress_ifindex` (0: the loopback of the caller's network namespace).
    /// Returns the XDP action and the packet as the program left it.
    pub fn test_run(
        &self,
        packet: &[u8],
        ingress_ifindex: u32,
    ) -> Result<(u32, Vec<u8>), ProgramError> {
        test_run(self.program(), packet, ingress_ifindex)
    }
}

/// Runs an XDP program once on `packet`; see [`Balancer::test_run`].
pub fn test_run(
    prog: &Xdp,
    packet: &[u8],
    ingress_ifindex: u32,
) -> Result<(u32, Vec<u8>), ProgramError> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let ctx: [u32; 6] = [0, packet.len() as u32, 0, ingress_ifindex, 0, 0];
    let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
    // Room for the largest encapsulation the balancer adds (40 bytes) and then some.
    let mut out = vec![0u8; packet.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: if ingress_ifindex == 0 {
            None
        } else {
            Some(&ctx_bytes)
        },
        ..TestRunOptions::default()
    };
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// One zero value per possible CPU.
fn zeros<T: aya::Pod + Default>() -> Result<PerCpuValues<T>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(DataplaneError::Cpus)
}

/// Loads an XDP program into the kernel, again when the verifier was interrupted: the
/// kernel answers `EAGAIN` when a signal arrives during a long verification (a busy host),
/// and a second try usually passes, as libbpf does.
pub(crate) fn load_program(p: &mut Xdp) -> Result<(), ProgramError> {
    load_retrying(|| p.load())
}

/// Runs `load` (a program's `load`) again while the verifier was interrupted (`EAGAIN`), up
/// to five times.
pub(crate) fn load_retrying(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    const TRIES: u32 = 5;
    let mut tries = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < TRIES =>
            {
                tracing::debug!(tries, "the verifier was interrupted; loading again");
                tries += 1;
            }
            r => return r,
        }
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, ProgramError> {
    let p = ebpf.program_mut(PROGRAM).ok_or(ProgramError::NotLoaded)?;
    p.try_into()
}

pub(crate) fn typed<T, M>(map: &'static str, m: M) -> Result<T>
where
    T: TryFrom<M, Error = aya::maps::MapError>,
{
    T::try_from(m).map_err(|source| DataplaneError::Map { map, source })
}

pub(crate) fn ignore_missing(
    r: Result<(), aya::maps::MapError>,
) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Checks a pinned map's key size, value size and entry count against what this
/// configuration needs.
fn check_pin(path: &Path, (key, value, entries, _): (u32, u32, u32, u32)) -> Result<()> {
    let info = MapInfo::from_pin(path).map_err(|source| DataplaneError::PinRead {
        path: path.to_owned(),
        source,
    })?;
    for (what, pinned, wanted) in [
        ("key size", info.key_size(), key),
        ("value size", info.value_size(), value),
        ("entries", info.max_entries(), entries),
    ] {
        if pinned != wanted {
            return Err(DataplaneError::IncompatiblePin {
                path: path.to_owned(),
                what,
                pinned,
                wanted,
            });
        }
    }
    Ok(())
}

/// The `MAGLEV` array mapped into this process (the map has `BPF_F_MMAPABLE`). Its 8-byte
/// elements hold two ids each, so the mapping is one contiguous array of `u32` ids.
struct MaglevTables {
    base: NonNull<u32>,
    entries: usize,
    m: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through
// &self / &mut self, so Rust's borrow rules serialise it within the process.
unsafe impl Send for MaglevTables {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for MaglevTables {}

impl MaglevTables {
    /// Maps the array; `entries` counts ids (twice the elements).
    fn map(ebpf: &Ebpf, m: u32, entries: u32) -> Result<Self> {
        let map = ebpf
            .map("MAGLEV")
            .expect("the balancer object defines MAGLEV");
        let data: &MapData = match map {
            aya::maps::Map::Array(d) => d,
            _ => unreachable!("MAGLEV is an array"),
        };
        let len = entries as usize * 4;
        // SAFETY: mmap of a BPF array created with BPF_F_MMAPABLE; the length is the map's
        // value area. The mapping stays valid until munmap in Drop, independent of the fd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast::<u32>())
            .ok_or_else(|| DataplaneError::Mmap(std::io::Error::other("null mapping")))?;
        Ok(Self {
            base,
            entries: entries as usize,
            m: m as usize,
        })
    }

    fn tables(&self) -> u32 {
        (self.entries / self.m) as u32
    }

    fn read(&self, table: u32) -> Result<&[u32]> {
        if table >= self.tables() {
            return Err(DataplaneError::NoSuchTable {
                table,
                tables: self.tables(),
            });
        }
        // SAFETY: the range lies inside the mapping (checked above); u32 has no invalid
        // values. The kernel may write entries concurrently only if a program did, which
        // ours never does (it only reads MAGLEV).
        Ok(unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(table as usize * self.m), self.m)
        })
    }

    fn write(&mut self, table: u32, entries: &[u32]) -> Result<()> {
        if table >= self.tables() {
            return Err(DataplaneError::NoSuchTable {
                table,
                tables: self.tables(),
            });
        }
        if entries.len() != self.m {
            return Err(DataplaneError::TableSize {
                got: entries.len(),
                want: self.m,
            });
        }
        // SAFETY: the range lies inside the mapping (checked above) and we hold &mut self.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(table as usize * self.m), self.m)
        };
        dst.copy_from_slice(entries);
        Ok(())
    }
}

impl Drop for MaglevTables {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.entries * 4) };
    }
}
