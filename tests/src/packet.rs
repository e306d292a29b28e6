//! A small packet builder for fixtures and traffic tests.
//!
//! Written independently of the data plane's own header code (`lb_common::encap`), so a
//! fixture's expected output is a second opinion, not the program's code run twice.
//! Builds Ethernet (with any number of VLAN tags), IPv4 (options, flags, fragment offset),
//! IPv6 (extension headers), TCP and UDP with correct lengths and checksums; every length
//! and checksum can be overridden to make malformed packets on purpose.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const FIN: u8 = 0x01;

/// The one's-complement sum of `data` as big-endian 16-bit words (odd length padded).
pub fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds and complements a one's-complement sum.
pub fn checksum(sum: u32) -> u16 {
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Whether an IPv4 header's checksum verifies.
pub fn ipv4_checksum_ok(header: &[u8]) -> bool {
    checksum(ones_sum(header, 0)) == 0
}

/// An IPv6 extension header to put between the fixed header and L4.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options with `len8` extra 8-octet units of padding options.
    HopByHop { len8: u8 },
    /// Destination options.
    DestOpts { len8: u8 },
    /// Routing header (type 0 with no addresses left, segments left 0).
    Routing { len8: u8 },
    /// Fragment header with the given offset (in 8-octet units) and M flag.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    fn code(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::DestOpts { .. } => 60,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match *self {
            Ext::HopByHop { len8 } | Ext::DestOpts { len8 } | Ext::Routing { len8 } => {
                let mut b = vec![0u8; 8 * (usize::from(len8) + 1)];
                b[0] = next;
                b[1] = len8;
                if let Ext::Routing { .. } = self {
                    b[2] = 0; // routing type
                    b[3] = 0; // segments left
                } else {
                    // PadN option filling the rest of the header.
                    b[2] = 1;
                    b[3] = (b.len() - 4) as u8;
                }
                b
            }
            Ext::Fragment { offset, more, id } => {
                let mut b = vec![0u8; 8];
                b[0] = next;
                b[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                b[4..8].copy_from_slice(&id.to_be_bytes());
                b
            }
        }
    }
}

#[derive(Clone, Debug)]
enum L3 {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        tos: u8,
        ttl: u8,
        id: u16,
        /// Flags (DF 0x4000, MF 0x2000) and fragment offset, as on the wire.
        frag: u16,
        options: Vec<u8>,
        ihl_override: Option<u8>,
        total_len_override: Option<u16>,
        csum_override: Option<u16>,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        tclass: u8,
        flow_label: u32,
        hop_limit: u8,
        ext: Vec<Ext>,
        payload_len_override: Option<u16>,
    },
    /// Any other ethertype with raw bytes after the L2 header.
    Raw { ethertype: u16, bytes: Vec<u8> },
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        data_offset: Option<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        len_override: Option<u16>,
    },
    /// ICMP / ICMPv6 with type, code and the rest of the message after the checksum.
    Icmp { kind: u8, code: u8, rest: Vec<u8> },
    /// Another protocol number with no header of its own (payload only).
    Raw { proto: u8 },
}

/// A packet under construction. Start with [`Packet::tcp4`] and friends, adjust, `build()`.
#[derive(Clone, Debug)]
pub struct Packet {
    dst_mac: Mac,
    src_mac: Mac,
    vlans: Vec<(u16, u16)>,
    l3: L3,
    l4: L4,
    payload: Vec<u8>,
    /// Bytes appended after the IP packet (Ethernet padding, trailing garbage).
    trailer: Vec<u8>,
    /// Cut the finished frame to this many bytes.
    truncate: Option<usize>,
    /// Send a UDP datagram without a checksum (0, allowed for IPv4).
    no_udp_checksum: bool,
}

/// MAC of the client-facing router in fixtures (the source of received frames).
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0xfe];
/// MAC of the load balancer's interface in fixtures.
pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];

impl Packet {
    fn new(l3: L3, l4: L4) -> Self {
        Self {
            dst_mac: LB_MAC,
            src_mac: ROUTER_MAC,
            vlans: Vec::new(),
            l3,
            l4,
            payload: Vec::new(),
            trailer: Vec::new(),
            truncate: None,
            no_udp_checksum: false,
        }
    }

    fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> L3 {
        L3::V4 {
            src,
            dst,
            tos: 0,
            ttl: 64,
            id: 0x1234,
            frag: 0x4000,
            options: Vec::new(),
            ihl_override: None,
            total_len_override: None,
            csum_override: None,
        }
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> L3 {
        L3::V6 {
            src,
            dst,
            tclass: 0,
            flow_label: 0x12345,
            hop_limit: 64,
            ext: Vec::new(),
            payload_len_override: None,
        }
    }

    fn ip(src: IpAddr, dst: IpAddr) -> L3 {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Self::v4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => Self::v6(s, d),
            _ => panic!("mixed address families {src} -> {dst}"),
        }
    }

    /// A TCP segment `src:sport -> dst:dport` with the given flags.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Self {
        Self::new(
            Self::ip(src, dst),
            L4::Tcp {
                sport,
                dport,
                flags,
                seq: 1000,
                ack: 0,
                data_offset: None,
            },
        )
    }

    /// A UDP datagram `src:sport -> dst:dport`.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self::new(
            Self::ip(src, dst),
            L4::Udp {
                sport,
                dport,
                len_override: None,
            },
        )
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) message.
    pub fn icmp(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: &[u8]) -> Self {
        Self::new(
            Self::ip(src, dst),
            L4::Icmp {
                kind,
                code,
                rest: rest.to_vec(),
            },
        )
    }

    /// "Too big" about `about`, from `src` to `dst` announcing `mtu`: ICMP fragmentation
    /// needed quoting 28 bytes for IPv4, ICMPv6 packet too big quoting 48 for IPv6.
    pub fn too_big(src: IpAddr, dst: IpAddr, mtu: u16, about: &Packet) -> Self {
        let quoted = about.ip_bytes();
        let (kind, code, head, n) = match src {
            IpAddr::V4(_) => (3, 4, [0, 0, (mtu >> 8) as u8, mtu as u8], 28),
            IpAddr::V6(_) => (2, 0, u32::from(mtu).to_be_bytes(), 48),
        };
        let mut rest = head.to_vec();
        rest.extend_from_slice(&quoted[..n]);
        Self::icmp(src, dst, kind, code, &rest)
    }

    /// An IP packet of protocol `proto` carrying only the payload.
    pub fn ip_proto(src: IpAddr, dst: IpAddr, proto: u8) -> Self {
        Self::new(Self::ip(src, dst), L4::Raw { proto })
    }

    /// A frame of another ethertype (ARP, LLDP, ...).
    pub fn ethertype(ethertype: u16, bytes: &[u8]) -> Self {
        Self::new(
            L3::Raw {
                ethertype,
                bytes: bytes.to_vec(),
            },
            L4::Raw { proto: 0 },
        )
    }

    /// An ARP request `who-has target tell sender`.
    pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Self {
        let mut b = vec![0, 1, 8, 0, 6, 4, 0, 1];
        b.extend_from_slice(&ROUTER_MAC);
        b.extend_from_slice(&sender.octets());
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&target.octets());
        let mut p = Self::ethertype(ETH_P_ARP, &b);
        p.dst_mac = [0xff; 6];
        p
    }

    pub fn macs(mut self, dst: Mac, src: Mac) -> Self {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    /// Adds an 802.1Q tag (outermost first when called repeatedly).
    pub fn vlan(mut self, vid: u16) -> Self {
        self.vlans.push((ETH_P_8021Q, vid));
        self
    }

    /// Adds a tag with a given TPID (0x88a8 for QinQ outer tags).
    pub fn vlan_tpid(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    pub fn trailer(mut self, bytes: &[u8]) -> Self {
        self.trailer = bytes.to_vec();
        self
    }

    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    /// IPv4 options (padded with zeros to a multiple of four bytes).
    pub fn ipv4_options(mut self, opts: &[u8]) -> Self {
        if let L3::V4 { options, .. } = &mut self.l3 {
            *options = opts.to_vec();
            while options.len() % 4 != 0 {
                options.push(0);
            }
        }
        self
    }

    /// IPv4 flags/fragment-offset field as on the wire (DF 0x4000, MF 0x2000).
    pub fn ipv4_frag(mut self, field: u16) -> Self {
        if let L3::V4 { frag, .. } = &mut self.l3 {
            *frag = field;
        }
        self
    }

    pub fn ipv4_id(mut self, value: u16) -> Self {
        if let L3::V4 { id, .. } = &mut self.l3 {
            *id = value;
        }
        self
    }

    pub fn flow_label(mut self, value: u32) -> Self {
        if let L3::V6 { flow_label, .. } = &mut self.l3 {
            *flow_label = value;
        }
        self
    }

    pub fn ipv4_ihl(mut self, ihl: u8) -> Self {
        if let L3::V4 { ihl_override, .. } = &mut self.l3 {
            *ihl_override = Some(ihl);
        }
        self
    }

    pub fn ipv4_total_len(mut self, len: u16) -> Self {
        if let L3::V4 {
            total_len_override, ..
        } = &mut self.l3
        {
            *total_len_override = Some(len);
        }
        self
    }

    /// The frame's 5-tuple as the flow table keys it.
    pub fn five_tuple(&self) -> lb_common::FlowKey {
        match lb_common::parse::parse(&self.build()[..]) {
            lb_common::parse::Parsed::Ip(h) => h.five_tuple().expect("a TCP or UDP packet"),
            _ => panic!("not an IP packet"),
        }
    }

    /// A UDP datagram without a checksum (the field 0, as IPv4 allows).
    pub fn no_udp_checksum(mut self) -> Self {
        self.no_udp_checksum = true;
        self
    }

    /// Sets the IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, value: u8) -> Self {
        match &mut self.l3 {
            L3::V4 { ttl, .. } => *ttl = value,
            L3::V6 { hop_limit, .. } => *hop_limit = value,
            L3::Raw { .. } => {}
        }
        self
    }

    /// Replaces the IPv4 header checksum the builder computes with `value`.
    pub fn ipv4_checksum(mut self, value: u16) -> Self {
        if let L3::V4 { csum_override, .. } = &mut self.l3 {
            *csum_override = Some(value);
        }
        self
    }

    pub fn tos(mut self, value: u8) -> Self {
        match &mut self.l3 {
            L3::V4 { tos, .. } => *tos = value,
            L3::V6 { tclass, .. } => *tclass = value,
            L3::Raw { .. } => {}
        }
        self
    }

    pub fn ipv6_ext(mut self, e: Ext) -> Self {
        if let L3::V6 { ext, .. } = &mut self.l3 {
            ext.push(e);
        }
        self
    }

    pub fn ipv6_payload_len(mut self, len: u16) -> Self {
        if let L3::V6 {
            payload_len_override,
            ..
        } = &mut self.l3
        {
            *payload_len_override = Some(len);
        }
        self
    }

    pub fn tcp_data_offset(mut self, words: u8) -> Self {
        if let L4::Tcp { data_offset, .. } = &mut self.l4 {
            *data_offset = Some(words);
        }
        self
    }

    pub fn tcp_seq(mut self, s: u32, a: u32) -> Self {
        if let L4::Tcp { seq, ack, .. } = &mut self.l4 {
            *seq = s;
            *ack = a;
        }
        self
    }

    pub fn udp_len(mut self, len: u16) -> Self {
        if let L4::Udp { len_override, .. } = &mut self.l4 {
            *len_override = Some(len);
        }
        self
    }

    fn l4_bytes(&self, src: &[u8], dst: &[u8], proto: u8) -> Vec<u8> {
        let mut seg = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                data_offset,
            } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[4..8].copy_from_slice(&seq.to_be_bytes());
                t[8..12].copy_from_slice(&ack.to_be_bytes());
                t[12] = data_offset.unwrap_or(5) << 4;
                t[13] = *flags;
                t[14..16].copy_from_slice(&64240u16.to_be_bytes());
                t
            }
            L4::Udp {
                sport,
                dport,
                len_override,
            } => {
                let mut u = vec![0u8; 8];
                u[0..2].copy_from_slice(&sport.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                let len = len_override.unwrap_or((8 + self.payload.len()) as u16);
                u[4..6].copy_from_slice(&len.to_be_bytes());
                u
            }
            L4::Icmp { kind, code, rest } => {
                let mut i = vec![*kind, *code, 0, 0];
                i.extend_from_slice(rest);
                i
            }
            L4::Raw { .. } => Vec::new(),
        };
        seg.extend_from_slice(&self.payload);
        let csum_at = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Icmp { .. } => Some(2),
            L4::Raw { .. } => None,
        };
        if let Some(at) = csum_at {
            let pseudo = if matches!(self.l4, L4::Icmp { .. }) && src.len() == 4 {
                0 // ICMPv4 has no pseudo-header.
            } else {
                let mut p = ones_sum(src, 0);
                p = ones_sum(dst, p);
                p + u32::from(proto) + seg.len() as u32
            };
            let mut c = checksum(ones_sum(&seg, pseudo));
            if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                c = 0xffff;
            }
            if self.no_udp_checksum && matches!(self.l4, L4::Udp { .. }) {
                c = 0;
            }
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        seg
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } => match self.l3 {
                L3::V6 { .. } => ICMPV6,
                _ => ICMP,
            },
            L4::Raw { proto } => proto,
        }
    }

    /// The IP packet (no L2 header), or the raw bytes of a non-IP frame.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let proto = self.proto();
        match &self.l3 {
            L3::V4 {
                src,
                dst,
                tos,
                ttl,
                id,
                frag,
                options,
                ihl_override,
                total_len_override,
                csum_override,
            } => {
                let seg = self.l4_bytes(&src.octets(), &dst.octets(), proto);
                let hlen = 20 + options.len();
                let mut h = vec![0u8; hlen];
                h[0] = 0x40 | ihl_override.unwrap_or((hlen / 4) as u8);
                h[1] = *tos;
                let total = total_len_override.unwrap_or((hlen + seg.len()) as u16);
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h[6..8].copy_from_slice(&frag.to_be_bytes());
                h[8] = *ttl;
                h[9] = proto;
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                h[20..].copy_from_slice(options);
                let c = csum_override.unwrap_or_else(|| checksum(ones_sum(&h, 0)));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend_from_slice(&seg);
                h
            }
            L3::V6 {
                src,
                dst,
                tclass,
                flow_label,
                hop_limit,
                ext,
                payload_len_override,
            } => {
                let seg = self.l4_bytes(&src.octets(), &dst.octets(), proto);
                let mut exts = Vec::new();
                for (i, e) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(proto, Ext::code);
                    exts.extend_from_slice(&e.bytes(next));
                }
                let first = ext.first().map_or(proto, Ext::code);
                let mut h = vec![0u8; 40];
                let w = (6u32 << 28) | (u32::from(*tclass) << 20) | (flow_label & 0xfffff);
                h[0..4].copy_from_slice(&w.to_be_bytes());
                let plen = payload_len_override.unwrap_or((exts.len() + seg.len()) as u16);
                h[4..6].copy_from_slice(&plen.to_be_bytes());
                h[6] = first;
                h[7] = *hop_limit;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                h.extend_from_slice(&exts);
                h.extend_from_slice(&seg);
                h
            }
            L3::Raw { bytes, .. } => bytes.clone(),
        }
    }

    /// Whether the packet is IPv6.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.l3, L3::V6 { .. })
    }

    fn l3_ethertype(&self) -> u16 {
        match self.l3 {
            L3::V4 { .. } => ETH_P_IP,
            L3::V6 { .. } => ETH_P_IPV6,
            L3::Raw { ethertype, .. } => ethertype,
        }
    }

    /// The L2 header: MACs, VLAN tags, ethertype of `ethertype`.
    pub fn l2_header(&self, ethertype: u16) -> Vec<u8> {
        l2(self.dst_mac, self.src_mac, &self.vlans, ethertype)
    }

    /// The whole frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = self.l2_header(self.l3_ethertype());
        f.extend_from_slice(&self.ip_bytes());
        f.extend_from_slice(&self.trailer);
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        f
    }

    /// The frame the balancer should emit for this packet when it encapsulates it to
    /// `backend` from `source`, with next-hop MACs `dst_mac`/`src_mac` (VLAN tags kept).
    /// `flow_label` is the outer IPv6 flow label (ignored for IPv4 outer headers).
    pub fn encapsulated(
        &self,
        source: IpAddr,
        backend: IpAddr,
        dst_mac: Mac,
        src_mac: Mac,
        flow_label: u32,
    ) -> Vec<u8> {
        let inner = self.ip_bytes();
        let (inner_proto, tos) = match &self.l3 {
            L3::V4 { tos, .. } => (4u8, *tos),
            L3::V6 { tclass, .. } => (41u8, *tclass),
            L3::Raw { .. } => panic!("only IP packets are encapsulated"),
        };
        let (ethertype, outer) = match (source, backend) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = vec![0u8; 20];
                h[0] = 0x45;
                h[1] = tos;
                h[2..4].copy_from_slice(&((20 + inner.len()) as u16).to_be_bytes());
                h[6] = 0x40; // DF
                h[8] = 64;
                h[9] = inner_proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = checksum(ones_sum(&h, 0));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                (ETH_P_IP, h)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut h = vec![0u8; 40];
                let w = (6u32 << 28) | (u32::from(tos) << 20) | (flow_label & 0xfffff);
                h[0..4].copy_from_slice(&w.to_be_bytes());
                h[4..6].copy_from_slice(&(inner.len() as u16).to_be_bytes());
                h[6] = inner_proto;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                (ETH_P_IPV6, h)
            }
            _ => panic!("outer source and backend differ in family"),
        };
        let mut f = l2(dst_mac, src_mac, &self.vlans, ethertype);
        f.extend_from_slice(&outer);
        f.extend_from_slice(&inner);
        f.extend_from_slice(&self.trailer);
        f
    }
}

fn l2(dst: Mac, src: Mac, vlans: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * vlans.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Where two frames first differ, with a hex view of both around it; for failure messages.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(8);
    let hex = |b: &[u8]| {
        b.iter()
            .skip(from)
            .take(24)
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "lengths got {} want {}; first difference at byte {at}\n  got  [{from}..]: {}\n  want [{from}..]: {}",
        got.len(),
        want.len(),
        hex(got),
        hex(want)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let p = Packet::tcp(
            "192.0.2.1".parse().unwrap(),
            40000,
            "203.0.113.10".parse().unwrap(),
            80,
            SYN,
        )
        .payload(b"hello");
        let ip = p.ip_bytes();
        assert!(ipv4_checksum_ok(&ip[..20]));
        // TCP checksum over pseudo-header + segment folds to zero.
        let mut sum = ones_sum(&ip[12..20], 0) + u32::from(TCP) + (ip.len() - 20) as u32;
        sum = ones_sum(&ip[20..], sum);
        assert_eq!(checksum(sum), 0);
    }

    #[test]
    fn ipv6_ext_chain_links() {
        let p = Packet::udp(
            "2001:db8::1".parse().unwrap(),
            1,
            "2001:db8::2".parse().unwrap(),
            2,
        )
        .ipv6_ext(Ext::HopByHop { len8: 0 })
        .ipv6_ext(Ext::DestOpts { len8: 1 });
        let ip = p.ip_bytes();
        assert_eq!(ip[6], 0);
        assert_eq!(ip[40], 60);
        assert_eq!(ip[48], UDP);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, ip.len() - 40);
    }
}
