//! `xlb-bench`: the numbers behind `cargo xtask bench`.
//!
//! 1. Per-packet cost of the balancer through `BPF_PROG_TEST_RUN`, one run per call, the
//!    kernel's own duration of each run; a batch's figure is its mean, the result the
//!    median of 5 batches, beside a trivial `XDP_TX` program measured the same way.
//!    Also the net cost without the per-call overhead: the bench entry point (which
//!    restores the template frame before balancing) with a large repeat, minus the restore
//!    alone.
//! 2. Forwarding rate with live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) on a veth, one CPU,
//!    against a MAC-swapping `XDP_TX` program.
//! 3. Maglev: build time, balance, disruption; the controller's update path for one
//!    backend change.
//! 4. TCP throughput client -> VIP -> backend through the balancer, against the same path
//!    without it.
//!    Paired: the same rows as ratios to the floor, each batch of the program next to a
//!    batch of the floor on the same frames, the order swapped every batch (`paired`).
//! 5. Executed BPF instructions per packet path (`../shared/tools/bpf-path-count` on a
//!    balancer `target/release/xlb` loaded; skipped without the tool).
//!
//! Prints a table (or `--json`), and the change against this CPU model's baseline in
//! `bench/baseline.json` (one per CPU model and kind; instruction counts, which do not
//! depend on the machine, against any that has them).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb_common::{FlowKey, FlowValue, addr_to_map, port_to_map};
use xlb::{dataplane::Balancer, maglev};
use xlb_tests::{
    fixtures::client4,
    lab::Lab,
    packet::{ACK, Packet, SYN},
};

/// One measured figure.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Figure {
    section: String,
    name: String,
    value: f64,
    unit: String,
    /// What to compare it with (the floor, the target, the reference).
    note: String,
}

struct Bench {
    quick: bool,
    figures: Vec<Figure>,
}

impl Bench {
    /// A per-call figure and its cost above the floor (`per_call`'s pair).
    fn per_packet(&mut self, name: &str, (raw, above): (f64, f64), note: &str) {
        self.add("per-packet", name, raw, "ns", note);
        self.add(
            "per-packet",
            &format!("{name}, above the floor"),
            above,
            "ns",
            "the program's own cost",
        );
    }

    fn add(&mut self, section: &str, name: &str, value: f64, unit: &str, note: &str) {
        eprintln!("  {name}: {value:.2} {unit}  {note}");
        self.figures.push(Figure {
            section: section.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            note: note.into(),
        });
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// `struct xdp_md` with an ingress interface, as `BPF_PROG_TEST_RUN` takes it.
fn ctx_bytes(len: usize, ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

/// Kernel-measured nanoseconds per run of one `BPF_PROG_TEST_RUN` call of `prog` on
/// `frame`, run `repeat` times inside the call.
fn timed_run(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> f64 {
    let ctx = ctx_bytes(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("test run");
    r.duration.as_nanos() as f64
}

/// Kernel-measured nanoseconds of one run of `prog` on `frame`.
fn one_run(prog: &Xdp, frame: &[u8], ifindex: u32) -> f64 {
    timed_run(prog, frame, ifindex, 1)
}

/// The floor of the per-call method: a trivial program and a frame for it.
struct Floor<'a> {
    prog: &'a Xdp,
    frame: Vec<u8>,
}

impl Floor<'_> {
    /// Mean per-call time of one batch of the floor program.
    fn batch(&self, ifindex: u32, calls: usize) -> f64 {
        (0..calls)
            .map(|_| one_run(self.prog, &self.frame, ifindex))
            .sum::<f64>()
            / calls as f64
    }
}

/// The paired figure of `prog` on `frame`: 10 batches of `calls` runs each of the program
/// and of the floor program on the same frame, in one process, the order swapped every
/// batch; the median of the per-batch ratios program / floor. A ratio of two batches
/// taken moments apart holds still when a shared machine's speed drifts between them.
fn paired(floor: &Xdp, prog: &Xdp, ifindex: u32, calls: usize, frame: &[u8]) -> f64 {
    let batch = |p: &Xdp| (0..calls).map(|_| one_run(p, frame, ifindex)).sum::<f64>();
    let ratios = (0..10)
        .map(|i| {
            let (f, x) = if i % 2 == 0 {
                let f = batch(floor);
                (f, batch(prog))
            } else {
                let x = batch(prog);
                (batch(floor), x)
            };
            x / f
        })
        .collect();
    median(ratios)
}

/// Per-call time of `prog` in 5 batches, each right after a batch of the floor program:
/// (median of the batch means, median of each batch's difference to the floor before
/// it). The difference is the program's own cost; alternating keeps a slow moment of a
/// shared machine from landing on one side only. `next` gives each call's frame and may
/// do untimed work between calls.
fn per_call(
    floor: &Floor,
    prog: &Xdp,
    ifindex: u32,
    calls: usize,
    mut next: impl FnMut(usize) -> Vec<u8>,
) -> (f64, f64) {
    let (mut batches, mut diffs) = (Vec::new(), Vec::new());
    for b in 0..5 {
        let f = floor.batch(ifindex, calls);
        let mut total = 0.0;
        for i in 0..calls {
            let frame = next(b * calls + i);
            total += one_run(prog, &frame, ifindex);
        }
        batches.push(total / calls as f64);
        diffs.push(total / calls as f64 - f);
    }
    (median(batches), median(diffs))
}

/// Average in-kernel nanoseconds per run with a large repeat (the frame is reused, so the
/// program must restore it: the bench entry point does).
fn repeated(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> f64 {
    median(
        (0..5)
            .map(|_| timed_run(prog, frame, ifindex, repeat))
            .collect(),
    )
}

/// Frames per second forwarded with live frames: the kernel runs the program on `frames`
/// copies of `frame` and transmits what it returns `XDP_TX` for. Median of 5 runs; the
/// kernel's error when it refuses the mode.
fn live_rate(prog: &Xdp, frame: &[u8], ifindex: u32, frames: u32) -> Result<f64, String> {
    let ctx = ctx_bytes(frame.len(), ifindex);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })
        .map_err(|e| format!("{e:?}"))?;
        rates.push(f64::from(frames) / start.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: sched_setaffinity on the calling thread with a zeroed, then filled, cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn reference() -> Ebpf {
    let mut e = Ebpf::load(xlb::programs::REFERENCE).expect("reference programs");
    for name in ["xlb_tx", "xlb_macswap", "xlb_drop"] {
        let p: &mut Xdp = e.program_mut(name).expect(name).try_into().expect("xdp");
        p.load().expect("load reference program");
    }
    e
}

fn xdp<'a>(e: &'a Ebpf, name: &str) -> &'a Xdp {
    e.program(name)
        .and_then(|p| p.try_into().ok())
        .expect("program")
}

/// A flow key the fixtures' VIP `web4` sees from `src:port`.
fn web4_flow(src: IpAddr, port: u16) -> FlowKey {
    let (s, family) = addr_to_map(src);
    let (d, _) = addr_to_map("203.0.113.10".parse().unwrap());
    FlowKey {
        src: s,
        dst: d,
        sport: port_to_map(port),
        dport: port_to_map(80),
        proto: 6,
        family,
        reserved: [0; 2],
    }
}

fn data_plane(b: &mut Bench) {
    eprintln!("\n== per-packet cost (BPF_PROG_TEST_RUN, one run per call, kernel time)");
    let entries = if b.quick { 1 << 16 } else { 1 << 20 };
    let mut lab = Lab::with_flow_table(entries);
    let calls = if b.quick { 2_000 } else { 20_000 };
    let _inside = lab.ns.enter();
    pin_to_cpu(0);
    let ifx = lab.ifindex;
    let refs = reference();
    let vip4: IpAddr = "203.0.113.10".parse().unwrap();
    let (c6, vip6): (IpAddr, IpAddr) = (
        "2001:db8:c::1".parse().unwrap(),
        "2001:db8:203::10".parse().unwrap(),
    );
    let c4 = client4();
    let syn4 = Packet::tcp(c4, 41000, vip4, 80, SYN).build();
    let ack4 = Packet::tcp(c4, 41000, vip4, 80, ACK).build();
    let udp4 = Packet::udp(c4, 41000, vip4, 53).payload(&[0; 32]).build();
    let syn6 = Packet::tcp(c6, 41000, vip6, 443, SYN).build();
    let ack6 = Packet::tcp(c6, 41000, vip6, 443, ACK).build();
    let other = Packet::tcp(c4, 41000, "203.0.113.11".parse().unwrap(), 80, ACK).build();

    let floor = Floor {
        prog: xdp(&refs, "xlb_tx"),
        frame: ack4.clone(),
    };
    let floor_ns = median((0..5).map(|_| floor.batch(ifx, calls)).collect());
    b.add(
        "per-packet",
        "floor: trivial XDP_TX program",
        floor_ns,
        "ns",
        "the per-call overhead of the method",
    );
    let lb = lab.lb.program();
    // Established: the flow is remembered first.
    for f in [&syn4, &syn6, &udp4] {
        one_run(lb, f, ifx);
    }
    let est4 = per_call(&floor, lb, ifx, calls, |_| ack4.clone());
    b.per_packet(
        "IPv4 TCP, established flow",
        est4,
        "target <= 100; Katran 131",
    );
    let est6 = per_call(&floor, lb, ifx, calls, |_| ack6.clone());
    b.per_packet("IPv6 TCP, established flow", est6, "");
    let udp = per_call(&floor, lb, ifx, calls, |_| udp4.clone());
    b.per_packet("IPv4 UDP, established flow", udp, "");
    let non_vip = per_call(&floor, lb, ifx, calls, |_| other.clone());
    b.per_packet("non-VIP packet (passed)", non_vip, "");
    for (frame, name) in [
        (&ack4, "IPv4 TCP, established flow"),
        (&ack6, "IPv6 TCP, established flow"),
        (&udp4, "IPv4 UDP, established flow"),
        (&other, "non-VIP packet (passed)"),
    ] {
        let r = paired(floor.prog, lb, ifx, calls, frame);
        b.add(
            "paired",
            &format!("{name}: time / the floor's on the same frames"),
            r,
            "ratio",
            "median of 10 alternated batch pairs",
        );
    }
    drop(_inside);

    // New flow, same key: the entry is removed (untimed) before every call.
    let key4 = web4_flow(c4, 41000);
    let (mut new4, mut diffs) = (Vec::new(), Vec::new());
    {
        let _inside = lab.ns.enter();
        for _ in 0..5 {
            let f = floor.batch(ifx, calls);
            let mut total = 0.0;
            for _ in 0..calls {
                lab.lb.remove_flow(&key4).unwrap();
                total += one_run(lab.lb.program(), &syn4, ifx);
            }
            new4.push(total / calls as f64);
            diffs.push(total / calls as f64 - f);
        }
    }
    b.per_packet(
        "IPv4 TCP SYN, new flow (same key)",
        (median(new4), median(diffs)),
        "target <= 150; Katran 238",
    );

    // NAT (full NAT, one target): the client's packets translated to the target, the
    // target's replies translated back, and new connections with their SNAT allocation.
    let nat_vip: IpAddr = "203.0.113.92".parse().unwrap();
    let nat_syn = Packet::tcp(c4, 41000, nat_vip, 80, SYN).build();
    let nat_ack = Packet::tcp(c4, 41000, nat_vip, 80, ACK).build();
    let (nat_target, nat_tport) =
        xlb_tests::nat_fixtures::target_of(&lab, &Packet::tcp(c4, 41000, nat_vip, 80, SYN));
    let snat = IpAddr::V4(xlb_tests::lab::SNAT_V4);
    let nat_reply = Packet::tcp(nat_target, nat_tport, snat, 41000, ACK).build();
    {
        let _inside = lab.ns.enter();
        let lb = lab.lb.program();
        one_run(lb, &nat_syn, ifx);
        let fwd = per_call(&floor, lb, ifx, calls, |_| nat_ack.clone());
        b.per_packet(
            "NAT IPv4 TCP, established flow, forward (client -> target)",
            fwd,
            "target: no more above the floor than DSR established",
        );
        let rev = per_call(&floor, lb, ifx, calls, |_| nat_reply.clone());
        b.per_packet(
            "NAT IPv4 TCP, established flow, reverse (target reply -> client)",
            rev,
            "target: no more above the floor than DSR established",
        );
    }
    let nat_conn = Packet::tcp(c4, 41000, nat_vip, 80, SYN).five_tuple();
    let nat_rev = lb_common::FlowKey {
        src: addr_to_map(nat_target).0,
        dst: addr_to_map(snat).0,
        sport: port_to_map(nat_tport),
        dport: port_to_map(41000),
        proto: 6,
        family: 4,
        reserved: [0; 2],
    };
    let (mut new_nat, mut diffs) = (Vec::new(), Vec::new());
    {
        let _inside = lab.ns.enter();
        for _ in 0..5 {
            let f = floor.batch(ifx, calls);
            let mut total = 0.0;
            for _ in 0..calls {
                lab.lb.remove_flow(&nat_conn).unwrap();
                lab.lb.remove_nat_reverse(&nat_rev).unwrap();
                total += one_run(lab.lb.program(), &nat_syn, ifx);
            }
            new_nat.push(total / calls as f64);
            diffs.push(total / calls as f64 - f);
        }
    }
    b.per_packet(
        "NAT IPv4 TCP SYN, new flow with SNAT allocation (entries removed before each call)",
        (median(new_nat), median(diffs)),
        "",
    );

    // New flows with fresh keys into a table with room: every call a new bucket and a free
    // entry, the denominator of the full-table row below (5 batches of `calls` use a sixth
    // of one CPU's share of `entries`, so nothing is evicted).
    let fresh_empty = {
        let _inside = lab.ns.enter();
        per_call(&floor, lab.lb.program(), ifx, calls, |i| {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000u32 + (i as u32 >> 16)));
            Packet::tcp(src, (i & 0xffff) as u16, vip4, 80, SYN).build()
        })
    };
    b.per_packet(
        "IPv4 TCP SYN, new flow, fresh key into a table with room",
        fresh_empty,
        "",
    );
    // A UDP flow's first datagram (32 bytes, as a DNS query), fresh keys, the same room.
    let udp_new = {
        let _inside = lab.ns.enter();
        per_call(&floor, lab.lb.program(), ifx, calls, |i| {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0ac0_0000u32 + (i as u32 >> 16)));
            Packet::udp(src, (i & 0xffff) as u16, vip4, 53)
                .payload(&[0xab; 32])
                .build()
        })
    };
    b.per_packet(
        "IPv4 UDP, new flow, fresh key into a table with room",
        udp_new,
        "",
    );

    // New flows with fresh keys into a full flow table.
    eprintln!("  (filling a flow table of {entries} entries)");
    let value = FlowValue {
        backend: lab.backend_ids[0][0],
        generation: 1,
        ..FlowValue::default()
    };
    for i in 0..entries {
        let src = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000u32 + (i >> 16)));
        lab.lb
            .set_flow(&web4_flow(src, (i & 0xffff) as u16), &value)
            .unwrap();
    }
    let _inside = lab.ns.enter();
    let lb = lab.lb.program();
    let fresh = |i: usize| {
        let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000u32 + (i as u32 >> 16)));
        Packet::tcp(src, (i & 0xffff) as u16, vip4, 80, SYN).build()
    };
    let fresh4 = per_call(&floor, lb, ifx, calls, fresh);
    b.per_packet(
        "IPv4 TCP SYN, new flow, fresh key into a full table",
        fresh4,
        "target <= 300; Katran 485-643",
    );
    b.add(
        "per-packet",
        "IPv4 TCP SYN, fresh key: full table / table with room, above the floor",
        fresh4.1 / fresh_empty.1,
        "ratio",
        "target <= 1.3",
    );
    let fresh6 = per_call(&floor, lb, ifx, calls, |i| {
        let mut a = [
            0x20u8, 0x01, 0x0d, 0xb8, 0, 0x0e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        a[12..16].copy_from_slice(&(i as u32).to_be_bytes());
        Packet::tcp(IpAddr::from(a), 40000, vip6, 443, SYN).build()
    });
    b.per_packet(
        "IPv6 TCP SYN, new flow, fresh key into a full table",
        fresh6,
        "",
    );
    drop(_inside);

    // Net cost: the bench entry point restores the frame each run; subtract the restore.
    let repeat = if b.quick { 100_000 } else { 1_000_000 };
    let _ = lab.lb.extra_program("xlb_balancer_bench").unwrap();
    let _ = lab.lb.extra_program("xlb_bench_restore").unwrap();
    for (frame, name, note) in [
        (
            &ack4,
            "IPv4 TCP established, net of per-call overhead",
            "Katran 79",
        ),
        (&other, "non-VIP, net of per-call overhead", "Katran 30"),
    ] {
        lab.lb.set_bench_template(frame).unwrap();
        let _inside = lab.ns.enter();
        let run = |program| repeated(lab.lb.program_named(program), frame, ifx, repeat);
        let net = run("xlb_balancer_bench") - run("xlb_bench_restore");
        b.add("net", name, net, "ns", note);
    }

    eprintln!("\n== forwarding rate (live frames on a veth, one CPU)");
    // The far end of fx0 drops what arrives, as cheaply as possible.
    let mut sink = Ebpf::load(xlb::programs::REFERENCE).unwrap();
    {
        let _inside = lab.ns.enter();
        let p: &mut Xdp = sink.program_mut("xlb_drop").unwrap().try_into().unwrap();
        p.load().unwrap();
        p.attach_to_if_index(lab.ns.ifindex("fx1"), XdpMode::Driver)
            .expect("attach the sink");
    }
    lab.lb.set_bench_template(&ack4).unwrap();
    let frames = if b.quick { 500_000 } else { 5_000_000 };
    let _inside = lab.ns.enter();
    // Some kernels refuse the mode (EPERM seen on 6.18.44 builds): the section says so and
    // the bench goes on.
    let floor = match live_rate(xdp(&refs, "xlb_macswap"), &ack4, ifx, frames) {
        Ok(r) => r / 1e6,
        Err(e) => {
            eprintln!("  skipped: the kernel refused live frames: {e}");
            return;
        }
    };
    b.add(
        "rate",
        "floor: MAC-swap XDP_TX",
        floor,
        "Mpps",
        "about 12.5 here",
    );
    let mut rate = 0.0;
    for (program, name, note) in [
        (
            "xlb_bench_restore",
            "restore-only XDP_TX (the bench entry's own overhead)",
            "",
        ),
        (
            "xlb_balancer_bench",
            "balancer, IPv4 TCP established, XDP_TX",
            "target >= 8.5; Katran 6.5",
        ),
    ] {
        rate = match live_rate(lab.lb.program_named(program), &ack4, ifx, frames) {
            Ok(r) => r / 1e6,
            Err(e) => {
                eprintln!("  {name}: skipped, the kernel refused live frames: {e}");
                return;
            }
        };
        b.add("rate", name, rate, "Mpps", note);
    }
    b.add("rate", "balancer / floor", rate / floor, "ratio", "");
}

fn maglev_figures(b: &mut Bench) {
    eprintln!("\n== Maglev (M = 65537)");
    let entries = |n: u32| -> Vec<maglev::Entry> {
        (1..=n)
            .map(|i| maglev::Entry {
                key: maglev::BackendKey {
                    addr: IpAddr::from(0xc633_0000u32.wrapping_add(i).to_be_bytes()),
                    port: 0,
                },
                weight: 100,
                id: i,
            })
            .collect()
    };
    let runs = if b.quick { 5 } else { 21 };
    for variant in [maglev::Variant::Lockstep, maglev::Variant::Classic] {
        let vname = if variant == maglev::Variant::Lockstep {
            "lockstep"
        } else {
            "classic"
        };
        for n in [100u32, 1000, 10_000] {
            let e = entries(n);
            let builder = maglev::Builder::new(65_537, 0)
                .variant(variant)
                .without_size_rule();
            let times: Vec<f64> = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(builder.build(&e).unwrap());
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let note = if n == 1000 {
                "target < 1 ms; reference Maglev about 2 ms"
            } else {
                ""
            };
            b.add(
                "maglev",
                &format!("build, {vname}, N={n}"),
                median(times),
                "ms",
                note,
            );
        }
        for n in [100u32, 1000] {
            let e = entries(n);
            let builder = maglev::Builder::new(65_537, 0)
                .variant(variant)
                .without_size_rule();
            let full = builder.build(&e).unwrap();
            let q = maglev::quality(&full, &e);
            b.add(
                "maglev",
                &format!("balance max/mean, {vname}, N={n}"),
                q.max_over_fair,
                "ratio",
                "",
            );
            let fewer = builder.build(&e[1..]).unwrap();
            let d = maglev::disruption(&full, &fewer);
            b.add(
                "maglev",
                &format!("one of N removed: slots moved, {vname}, N={n}"),
                d.changed_fraction() * 100.0,
                "%",
                "reference 1.55 / 0.68",
            );
            b.add(
                "maglev",
                &format!("one of N removed: collateral, {vname}, N={n}"),
                d.collateral_fraction() * 100.0,
                "%",
                "",
            );
        }
    }
}

/// The controller's whole update path for one backend change: engine diff, table build,
/// write through the mapping, switch.
fn update_latency(b: &mut Bench) {
    use xlb::{config::Config, engine::Engine};
    for n in [100usize, 1000] {
        let m = if n == 100 { 65_537 } else { 100_003 };
        let backends: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{{ address = \"10.{}.{}.{}\" }}",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect();
        let text = format!(
            "[dataplane]\nsource_v4 = \"198.51.100.10\"\nmaglev_table_size = {m}\nmax_vips = 4\nmax_backends = 4096\nflow_table_entries = 1024\n\
             [[vip]]\naddress = \"203.0.113.10\"\nport = 80\nhealth_check = {{ protocol = \"none\" }}\nbackends = [ {} ]\n",
            backends.join(", ")
        );
        let config = Config::parse(&text, "bench").unwrap();
        let lb = Balancer::load(config.dataplane.limits, None).expect("load");
        let mut engine = Engine::new(lb, config.dataplane.clone());
        engine.apply(&config).unwrap();
        let mut other = config.clone();
        let runs = if b.quick { 5 } else { 15 };
        let times: Vec<f64> = (0..runs)
            .map(|i| {
                // Alternate one backend's weight: a real change, one table rebuild.
                other.vips[0].backends[0].weight = if i % 2 == 0 { 50 } else { 100 };
                let t = Instant::now();
                engine.apply(&other).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        b.add(
            "maglev",
            &format!("controller update, one backend changed, N={n}, M={m}"),
            median(times),
            "ms",
            "diff + build + write + switch",
        );
    }
}

/// TCP throughput with real iperf3, the way a user compares: one stream from the lab
/// client through the VIP (encapsulated by the balancer, decapsulated by `xlb decap` on
/// backend 1) against the same stream sent straight to backend 1's address; and the
/// decapsulator's cost on traffic it does not decapsulate: that direct stream to backend 1
/// (`xlb decap` attached) against one to backend 2 (nothing attached). Pairs alternate
/// which goes first; each ratio is the median of the per-pair ratios.
fn throughput(b: &mut Bench) {
    use std::process::{Child, Command, Stdio};
    use xlb_tests::{
        daemon::Daemon,
        scenario::*,
        topology::{Topology, attach_reference, backend_v4},
    };
    eprintln!("\n== TCP throughput, one iperf3 stream (namespaces)");
    if Command::new("iperf3").arg("--version").output().is_err() {
        eprintln!("  skipped: needs iperf3 (Debian `iperf3`; `cargo xtask setup` installs it)");
        return;
    }
    let topo = Topology::new(2);
    // Backend 1 is a DSR backend: the VIP on its loopback, the decapsulator on its link.
    topo.backends[0].ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let pins = format!("/sys/fs/bpf/xlb-test-decap/{}", topo.backends[0].name());
    topo.backends[0].exec(
        &xlb_tests::daemon::xlb_bin().to_string_lossy(),
        &["decap", "--iface", "eth0", "--pin-dir", &pins],
    );
    /// iperf3 servers, killed on drop.
    struct Servers(Vec<Child>);
    impl Drop for Servers {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let _servers = Servers(
        topo.backends
            .iter()
            .map(|ns| {
                ns.command("iperf3")
                    .args(["-s", "-p", "5201"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start iperf3 -s")
            })
            .collect(),
    );
    let secs = if b.quick { "3" } else { "6" };
    // (Gbit/s received, retransmissions) of one stream to `to`.
    let stream = |to: &str| -> Option<(f64, f64)> {
        let out = topo
            .client
            .command("iperf3")
            .args(["-c", to, "-p", "5201", "-t", secs, "-J"])
            .output()
            .ok()?;
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let end = &j["end"];
        Some((
            end["sum_received"]["bits_per_second"].as_f64()? / 1e9,
            end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
        ))
    };
    let pairs = if b.quick { 3 } else { 7 };
    let measure = |a: &str, other: &str| {
        let (mut xa, mut xb, mut ratio, mut ra, mut rb) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..pairs {
            let (first, second) = if i % 2 == 0 { (a, other) } else { (other, a) };
            let (Some(f), Some(s)) = (stream(first), stream(second)) else {
                continue;
            };
            let ((ga, rta), (gb, rtb)) = if i % 2 == 0 { (f, s) } else { (s, f) };
            xa.push(ga);
            xb.push(gb);
            ra.push(rta);
            rb.push(rtb);
            ratio.push(ga / gb);
        }
        (xa, xb, ratio, ra, rb)
    };
    let via = VIP.to_string();
    let direct = backend_v4(1).to_string();
    let bare = backend_v4(2).to_string();

    // The topology's own ceilings: the same hops (client -> router -> LB -> router ->
    // backend 1), the router sending what comes back from the LB on to backend 1 by a
    // policy route, no encapsulation. Twice: the LB forwarding by its kernel, no XDP
    // program on its link (what a plain router in the LB's place costs), and the LB's XDP
    // program only swapping the MACs (`XDP_TX`: what any XDP program there costs). The
    // router's entry for the LB is made permanent first: the MAC-swapping LB bounces ARP
    // too.
    let lb_mac =
        serde_json::from_str::<serde_json::Value>(&topo.lb.ip(&["-j", "link", "show", "eth0"]))
            .ok()
            .and_then(|j| j[0]["address"].as_str().map(str::to_owned));
    let (routed, ceiling) = match lb_mac {
        Some(mac) => {
            let r = &topo.router;
            r.ip(&[
                "neigh",
                "replace",
                "198.18.0.2",
                "lladdr",
                &mac,
                "dev",
                "lb",
                "nud",
                "permanent",
            ]);
            r.ip(&[
                "rule",
                "add",
                "iif",
                "lb",
                "to",
                &format!("{VIP}/32"),
                "lookup",
                "100",
                "pref",
                "100",
            ]);
            r.ip(&[
                "route",
                "add",
                &format!("{VIP}/32"),
                "via",
                &direct,
                "table",
                "100",
            ]);
            // The LB's kernel routes the VIP back to the router (its default route), which
            // it must not answer with redirects.
            let lb = &topo.lb;
            for s in [
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
                "net.ipv4.ip_forward=1",
            ] {
                lb.sysctl(s);
            }
            let routed = measure(&via, &direct);
            lb.sysctl("net.ipv4.ip_forward=0");
            let swap = attach_reference(lb, "eth0", "xlb_macswap");
            let swapped = measure(&via, &direct);
            drop(swap);
            r.ip(&["rule", "del", "pref", "100"]);
            r.ip(&["route", "del", &format!("{VIP}/32"), "table", "100"]);
            (Some(routed), Some(swapped))
        }
        None => (None, None),
    };

    let config = header()
        + &tcp_vip(5201, &[1], "").replace(
            "interval = \"300ms\"",
            "protocol = \"none\"\ninterval = \"300ms\"",
        );
    let _daemon = Daemon::start(&topo.lb, &config);
    // The VIP answers once the daemon has filled the maps.
    let start = Instant::now();
    while vip_refuses(&topo.client) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(300));
    }
    let (v, d, r, rv, rd) = measure(&via, &direct);
    if r.is_empty() {
        eprintln!("  skipped: no iperf3 stream completed through the VIP");
        return;
    }
    let n = format!("median of {} alternated pairs", r.len());
    b.add(
        "throughput",
        "client -> VIP -> backend (through xlb)",
        median(v),
        "Gbit/s",
        "",
    );
    b.add(
        "throughput",
        "client -> backend (no balancer)",
        median(d),
        "Gbit/s",
        "",
    );
    b.add(
        "throughput",
        "through xlb / direct",
        median(r.clone()),
        "ratio",
        &format!("target >= 0.95; {n}"),
    );
    match routed {
        Some((cv, _, cr, _, _)) if !cr.is_empty() => {
            let n = format!("median of {} alternated pairs", cr.len());
            b.add(
                "throughput",
                "control: the same hops, the LB routing by its kernel (no XDP)",
                median(cv),
                "Gbit/s",
                "a plain router in the LB's place",
            );
            b.add(
                "throughput",
                "routed control / direct",
                median(cr),
                "ratio",
                &n,
            );
        }
        _ => eprintln!("  routed control skipped: no stream completed through the routing LB"),
    }
    match ceiling {
        Some((cv, _, cr, _, _)) if !cr.is_empty() => {
            let n = format!("median of {} alternated pairs", cr.len());
            b.add(
                "throughput",
                "control: the same hops, the LB only swapping MACs (XDP_TX), no encapsulation",
                median(cv),
                "Gbit/s",
                "the topology's ceiling for an XDP program",
            );
            b.add(
                "throughput",
                "control / direct",
                median(cr.clone()),
                "ratio",
                &n,
            );
            b.add(
                "throughput",
                "through xlb / control (ratios of the two medians)",
                median(r) / median(cr),
                "ratio",
                "",
            );
        }
        _ => eprintln!("  control skipped: no stream completed through the MAC-swapping LB"),
    }
    b.add(
        "throughput",
        "retransmissions through xlb, per stream",
        median(rv),
        "segments",
        "",
    );
    b.add(
        "throughput",
        "retransmissions direct, per stream",
        median(rd),
        "segments",
        "",
    );
    let (with, without, r, _, _) = measure(&direct, &bare);
    if !r.is_empty() {
        let n = format!(
            "target: no measurable cost; median of {} alternated pairs",
            r.len()
        );
        b.add(
            "throughput",
            "direct to a backend with `xlb decap` attached",
            median(with),
            "Gbit/s",
            "",
        );
        b.add(
            "throughput",
            "direct to a backend without it",
            median(without),
            "Gbit/s",
            "",
        );
        b.add(
            "throughput",
            "with decap / without (traffic it does not decapsulate)",
            median(r),
            "ratio",
            &n,
        );
    }
    let _ = std::fs::remove_dir_all(&pins);
}

/// Whether the VIP still refuses: a one-second iperf3 stream through it fails.
fn vip_refuses(client: &xlb_tests::netns::Netns) -> bool {
    !client
        .command("iperf3")
        .args(["-c", xlb_tests::scenario::VIP, "-p", "5201", "-t", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The balancer's configuration for `instructions`: DSR VIPs for TCP and UDP of either
/// family, and a NAT VIP, one backend each, no health checks (nothing answers).
const COUNT_CONFIG: &str = r#"
[dataplane]
interface = "eth0"
source_v4 = "198.18.0.2"
source_v6 = "2001:db8:18::2"
snat_v4 = "198.18.0.10"
flow_table_entries = 1000
maglev_table_size = 65537
max_vips = 16
max_backends = 64

[daemon]
socket = "@DIR@/xlb.sock"
pin_dir = "/sys/fs/bpf/@NAME@"
metrics_address = "off"

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
health_check = { protocol = "none" }
backends = [ { address = "198.51.100.11" } ]

[[vip]]
name = "dns"
address = "203.0.113.12"
port = 53
protocol = "udp"
health_check = { protocol = "none" }
backends = [ { address = "198.51.100.12" } ]

[[vip]]
name = "web6"
address = "2001:db8:203::10"
port = 80
protocol = "tcp"
health_check = { protocol = "none" }
backends = [ { address = "2001:db8:198::11" } ]

[[vip]]
name = "dns6"
address = "2001:db8:203::12"
port = 53
protocol = "udp"
health_check = { protocol = "none" }
backends = [ { address = "2001:db8:198::12" } ]

[[vip]]
name = "tasks"
address = "203.0.113.20"
port = 80
protocol = "tcp"
forwarding = "nat"
health_check = { protocol = "none" }
backends = [ { address = "198.51.100.14", port = 32768 } ]
"#;

/// Executed BPF instructions per packet path, counted by `../shared/tools/bpf-path-count`
/// (it emulates the loaded program's translated code, so the counts are the same on every
/// machine and every run) through `bench/path-count.py` (the frames of every path, and the
/// helpers the tool does not know), on a balancer run by `target/release/xlb` in a namespace
/// of its own; skipped, with a line saying so, without the tool, python3 or bpftool.
fn instructions(b: &mut Bench, root: &std::path::Path) {
    use std::process::{Command, Stdio};
    use xlb_tests::netns::Netns;
    eprintln!("\n== executed BPF instructions per packet (bpf-path-count)");
    // `XLB_PATH_COUNT` names another copy of the tool.
    let tool = std::env::var_os("XLB_PATH_COUNT").map_or_else(
        || root.join("../shared/tools/bpf-path-count"),
        PathBuf::from,
    );
    let driver = root.join("bench/path-count.py");
    let xlb = root.join("target/release/xlb");
    let have = |bin: &str| Command::new(bin).arg("--version").output().is_ok();
    if !tool.exists() || !have("bpftool") || !have("python3") || !xlb.exists() {
        eprintln!(
            "  skipped: needs {}, bpftool (Debian `bpftool`), python3 and {}",
            tool.display(),
            xlb.display()
        );
        return;
    }
    let (lb, peer) = (Netns::new("count"), Netns::new("count-peer"));
    xlb_tests::netns::run(
        "ip",
        &[
            "link",
            "add",
            "pc-peer",
            "netns",
            peer.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            lb.name(),
        ],
    );
    // The frames are addressed to 00:00:00:00:00:02 from :01.
    lb.ip(&["link", "set", "eth0", "address", "00:00:00:00:00:02"]);
    lb.ip(&["addr", "add", "198.18.0.2/24", "dev", "eth0"]);
    lb.ip(&["addr", "add", "2001:db8:18::2/64", "dev", "eth0", "nodad"]);
    lb.ip(&["link", "set", "eth0", "up"]);
    peer.ip(&["link", "set", "pc-peer", "up"]);
    for hop in ["198.18.0.1", "2001:db8:18::1"] {
        lb.ip(&[
            "neigh",
            "add",
            hop,
            "lladdr",
            "00:00:00:00:00:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    for (net, hop) in [
        ("198.51.100.0/24", "198.18.0.1"),
        ("192.0.2.0/24", "198.18.0.1"),
        ("2001:db8:198::/64", "2001:db8:18::1"),
        ("2001:db8:2::/64", "2001:db8:18::1"),
    ] {
        lb.ip(&["route", "add", net, "via", hop]);
    }
    lb.sysctl("net.ipv4.ip_forward=1");
    lb.sysctl("net.ipv6.conf.all.forwarding=1");
    let dir = std::env::temp_dir().join(lb.name());
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = COUNT_CONFIG
        .replace("@DIR@", &dir.display().to_string())
        .replace("@NAME@", lb.name());
    let path = dir.join("xlb.toml");
    std::fs::write(&path, config).expect("write the configuration");
    let mut daemon = lb
        .command(&xlb)
        .args(["run", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start xlb");
    let pins = PathBuf::from("/sys/fs/bpf").join(lb.name());
    let prog = {
        let start = Instant::now();
        loop {
            let link: serde_json::Value =
                serde_json::from_str(&lb.ip(&["-j", "-d", "link", "show", "eth0"]))
                    .unwrap_or_default();
            let id = link[0]["xdp"]["prog"]["id"].as_u64();
            if id.is_some() || start.elapsed() > Duration::from_secs(60) {
                break id;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    if prog.is_none() {
        eprintln!("  skipped: the balancer did not attach within 60 s");
    }
    // Give the daemon its first tick (the MAC, the VIPs' tables) before counting.
    std::thread::sleep(Duration::from_secs(1));
    // One run of the driver: (its name for the packet, instructions, the program's action).
    let count = |kind: &str, vip: &str, client: &str, port: &str, other: &str| {
        let Some(id) = prog else {
            return (Vec::new(), String::new());
        };
        let out = Command::new("python3")
            .arg(&driver)
            .arg(&tool)
            .args([&id.to_string(), kind, vip, client, port, other])
            .output()
            .expect("run bench/path-count.py");
        // "== xlb TCP SYN (new flow): 588 BPF insns executed (xlated), retval 3, ..."
        let counts: Vec<(String, f64, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let l = l.strip_prefix("== xlb ")?;
                let (path, rest) = l.split_once(": ")?;
                let n = rest.split_whitespace().next()?.parse().ok()?;
                let retval = rest
                    .split("retval ")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((path.to_owned(), n, retval))
            })
            .collect();
        let err = String::from_utf8_lossy(&out.stderr);
        (counts, err.lines().last().unwrap_or("").to_owned())
    };
    let runs = [
        (
            "DSR VIP, IPv4",
            count("tcp", "203.0.113.10", "192.0.2.50", "80", "203.0.113.11"),
        ),
        (
            "DSR VIP, IPv4",
            count("udp", "203.0.113.12", "192.0.2.50", "53", ""),
        ),
        (
            "DSR VIP, IPv6",
            count(
                "tcp",
                "2001:db8:203::10",
                "2001:db8:2::50",
                "80",
                "2001:db8:203::11",
            ),
        ),
        (
            "DSR VIP, IPv6",
            count("udp", "2001:db8:203::12", "2001:db8:2::50", "53", ""),
        ),
        (
            "NAT VIP, IPv4",
            count("nat", "203.0.113.20", "192.0.2.50", "80", ""),
        ),
    ];
    let _ = daemon.kill();
    let _ = daemon.wait();
    // The pinned link and maps go with their files; the interface with the namespaces.
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(&dir);
    // The driver's names for its packets, ours, the action a packet must get for its count
    // to be of the path it names (XDP_PASS 2, XDP_TX 3), and the DSR IPv4 targets (the NAT
    // rows' are set below).
    let paths = [
        (
            "TCP SYN (new flow)",
            "TCP SYN, new flow",
            3,
            "target <= 600; Katran 578",
        ),
        (
            "TCP ACK (established)",
            "TCP established",
            3,
            "target <= 400; Katran 388",
        ),
        ("non-VIP", "not for a VIP", 2, "target <= 120; Katran 155"),
        ("UDP first", "UDP, new flow", 3, ""),
        ("UDP tracked", "UDP established", 3, ""),
        (
            "NAT reply",
            "TCP reply, the first to a client (its next hop not cached yet)",
            3,
            "",
        ),
        (
            "NAT second reply",
            "TCP reply, a later connection's first (the client's next hop cached)",
            3,
            "",
        ),
        ("NAT reply again", "TCP reply, established", 3, ""),
    ];
    for (vip, (counts, err)) in &runs {
        if counts.is_empty() {
            eprintln!("  {vip}: skipped, the tool printed no count ({err})");
            continue;
        }
        for (path, n, retval) in counts {
            let Some((_, name, action, note)) = paths.iter().find(|p| p.0 == path) else {
                continue;
            };
            // Otherwise the tool did not read the maps the program uses, and counted a
            // refusal: leave the row out rather than report it.
            if retval & 0xffff_ffff != *action {
                eprintln!("  {vip} {name}: skipped, action {retval} where {action} was due");
                continue;
            }
            // The targets are the issue's, for IPv4: DSR as stated, NAT DSR's + 60.
            let note = match (*name, *vip) {
                ("TCP established" | "TCP reply, established", "NAT VIP, IPv4") => {
                    "target <= DSR established + 60"
                }
                (_, "DSR VIP, IPv4") => note,
                _ => "",
            };
            let name = if *name == "not for a VIP" {
                // The IPv4 row keeps the name the baseline knows it by.
                let family = if vip.ends_with("v6") { "IPv6, " } else { "" };
                format!("{family}{name}: executed instructions")
            } else {
                format!("{vip} {name}: executed instructions")
            };
            b.add("instructions", &name, *n, "insns", note);
        }
    }
}

fn machine() -> BTreeMap<String, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    BTreeMap::from([
        ("cpu".into(), model),
        ("cores".into(), cores.to_string()),
        ("kernel".into(), kernel),
    ])
}

/// The baselines in `path`, one per CPU model and kind (`--quick` or not): `{"baselines":
/// [report, ...]}`, or a single report as the file held before it kept one per machine.
fn read_baselines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let Some(saved) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return Vec::new();
    };
    match saved.get("baselines").and_then(|v| v.as_array()) {
        Some(all) => all.clone(),
        None if saved.get("figures").is_some() => vec![saved],
        None => Vec::new(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let save = args.iter().any(|a| a == "--save-baseline");
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let run = |s: &str| only.is_empty() || only.iter().any(|o| *o == s);
    xlb_tests::netns::require_root();
    xlb_tests::netns::cleanup_on_signal();
    let mut b = Bench {
        quick,
        figures: Vec::new(),
    };
    let m = machine();
    eprintln!(
        "xlb bench on {} ({} cores), kernel {}",
        m["cpu"], m["cores"], m["kernel"]
    );
    if run("dataplane") {
        data_plane(&mut b);
    }
    if run("maglev") {
        maglev_figures(&mut b);
        update_latency(&mut b);
    }
    if run("throughput") {
        throughput(&mut b);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if run("instructions") {
        instructions(&mut b, &root);
    }
    let baseline_path = root.join("bench/baseline.json");
    let mut baselines = read_baselines(&baseline_path);
    // Compared with the baseline of the same kind (a --quick run uses smaller tables and
    // fewer calls) from the same CPU model: times on another CPU say nothing about a
    // change. Executed instructions do not depend on the machine: they are compared with
    // any baseline that has them when this CPU's has none.
    let same = |r: &serde_json::Value, cpu: &str| {
        r["quick"].as_bool() == Some(quick) && r["machine"]["cpu"].as_str() == Some(cpu)
    };
    let figures_of = |r: &serde_json::Value| -> BTreeMap<String, f64> {
        serde_json::from_value::<Vec<Figure>>(r["figures"].clone())
            .map(|f| f.into_iter().map(|x| (x.name, x.value)).collect())
            .unwrap_or_default()
    };
    let ours = baselines.iter().find(|r| same(r, &m["cpu"]));
    let baseline = ours.map(figures_of).unwrap_or_default();
    // This CPU's other kind first: it is likelier to be of a recent build.
    let counted: BTreeMap<String, f64> = baselines
        .iter()
        .filter(|r| r["machine"]["cpu"].as_str() == Some(m["cpu"].as_str()))
        .chain(baselines.iter())
        .map(figures_of)
        .find(|f| {
            b.figures
                .iter()
                .any(|x| x.unit == "insns" && f.contains_key(&x.name))
        })
        .unwrap_or_default();
    let others: Vec<String> = baselines
        .iter()
        .filter(|r| !same(r, &m["cpu"]))
        .filter_map(|r| {
            let kind = if r["quick"].as_bool() == Some(true) {
                "--quick"
            } else {
                "full"
            };
            Some(format!("{} ({kind})", r["machine"]["cpu"].as_str()?))
        })
        .collect();
    let report = serde_json::json!({ "machine": m, "quick": quick, "figures": b.figures });
    std::fs::create_dir_all(root.join("bench")).ok();
    std::fs::write(
        root.join("bench/last-run.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .ok();
    let had_ours = !baseline.is_empty();
    if save {
        // This CPU's baseline of this kind is replaced; the other machines' stay.
        baselines.retain(|r| !same(r, &m["cpu"]));
        baselines.push(report.clone());
        let all = serde_json::json!({ "baselines": baselines });
        std::fs::write(&baseline_path, serde_json::to_vec_pretty(&all).unwrap())
            .expect("write the baseline");
        eprintln!("saved {} for {}", baseline_path.display(), m["cpu"]);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        return;
    }
    println!(
        "\nxlb bench — {} ({} cores), kernel {}{}",
        m["cpu"],
        m["cores"],
        m["kernel"],
        if quick { " (quick)" } else { "" }
    );
    if !had_ours {
        println!(
            "(bench/baseline.json has no {} baseline for {}{}: times not compared; \
             --save-baseline records one)",
            if quick { "--quick" } else { "full" },
            m["cpu"],
            if others.is_empty() {
                String::new()
            } else {
                format!("; it has {}", others.join(", "))
            }
        );
    }
    let mut section = String::new();
    for f in &b.figures {
        if f.section != section {
            section = f.section.clone();
            println!("\n{section}");
        }
        let from = if f.unit == "insns" && !baseline.contains_key(&f.name) {
            &counted
        } else {
            &baseline
        };
        let change = from
            .get(&f.name)
            .filter(|v| **v != 0.0)
            .map_or(String::new(), |v| {
                format!("{:+.0}%", (f.value - v) / v * 100.0)
            });
        println!(
            "  {:<70} {:>10.3} {:<7} {:>7}  {}",
            f.name, f.value, f.unit, change, f.note
        );
    }
}
