//! Indexes of the global counters (`GLOBAL_STATS`, `DECAP_STATS`) and their names.
//!
//! Every packet the balancer sees is counted once, under the pair of the XDP action it got
//! and the reason for it (`slot`): one counter moves per packet. The totals users read,
//! per action and per reason (`totals`), are sums of those, so `sum(actions) ==
//! sum(reasons) == packets seen`.

/// The XDP actions, in kernel numbering: `totals()[action]` counts packets that got it.
pub const ACTION_NAMES: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Number of action counters (indexes `0..ACTIONS`).
pub const ACTIONS: u32 = 5;

/// What a reason means for the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Sent on to a backend.
    Forward,
    /// Left to the kernel, unchanged.
    Pass,
    /// Dropped.
    Drop,
    /// The balancer answered the packet itself.
    Reply,
}

impl Kind {
    /// `forward`, `pass`, `drop` or `reply`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Forward => "forward",
            Kind::Pass => "pass",
            Kind::Drop => "drop",
            Kind::Reply => "reply",
        }
    }
}

/// Defines [`Reason`] from one table: variant, counter name, kind, and its documentation.
/// The index of a reason is its position in the table (`totals()[ACTIONS + index]`).
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $kind:ident;)*) => {
        /// Why a packet got its action: one total each, at `totals()[ACTIONS + reason]`.
        /// One byte, so the data plane's `Outcome` (action, reason, MTU) fits a register.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: [Reason; Reason::COUNT as usize] = [$(Reason::$variant,)*];
            /// Number of reasons.
            pub const COUNT: u32 = [$(Reason::$variant,)*].len() as u32;

            /// The name shown by `xlb stats` and in `xlb_*_total{reason=...}`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// What the reason means for the packet.
            pub const fn kind(self) -> Kind {
                match self {
                    $(Reason::$variant => Kind::$kind,)*
                }
            }

            /// The counter index of the reason.
            #[inline(always)]
            pub const fn index(self) -> u32 {
                self as u32
            }

            /// The reason with counter index `i`.
            pub const fn from_index(i: u32) -> Option<Reason> {
                if i < Reason::COUNT {
                    Some(Reason::ALL[i as usize])
                } else {
                    None
                }
            }
        }
    };
}

reasons! {
    /// Forwarded to a backend (`tx` or `redirect`).
    Forwarded = "forwarded", Forward;
    /// Passed: not an IP packet (ARP, LLDP, two VLAN tags, ...).
    PassNotIp = "not_ip", Pass;
    /// Passed: IP header truncated or inconsistent, left to the kernel to judge.
    PassBadIp = "bad_ip_header", Pass;
    /// Passed: not addressed to a VIP (address, port or protocol).
    PassNotVip = "not_vip", Pass;
    /// Dropped: a fragment addressed to a VIP address (ports unknown, flow unknowable).
    DropFragment = "fragment", Drop;
    /// Dropped: VIP packet with a truncated or invalid TCP/UDP header.
    DropMalformed = "malformed", Drop;
    /// Dropped: the VIP has no backend to take a new flow.
    DropNoBackend = "no_backend", Drop;
    /// Dropped: no route to the backend (unreachable, blackhole, prohibited).
    DropNoRoute = "no_route", Drop;
    /// Dropped: too big for the egress MTU once encapsulated.
    DropTooBig = "too_big", Drop;
    /// Dropped: no headroom to encapsulate (`bpf_xdp_adjust_head` failed).
    DropEncapFailed = "encap_failed", Drop;
    /// Dropped: forwarding is disabled on the interface, so the FIB lookup refuses.
    DropFwdDisabled = "forwarding_disabled", Drop;
    /// Dropped: no outer source address configured for the backend's family.
    DropNoSource = "no_source_address", Drop;
    /// Dropped: the backend's family cannot carry this packet (IPv6 in IPv4).
    DropFamily = "family_mismatch", Drop;
    /// Dropped: the next hop towards the backend has no resolved MAC address yet; the
    /// controller is told (`NEIGH_EVENTS`) and has the kernel resolve it, so the sender's
    /// retransmission goes through.
    DropNoNeigh = "no_neighbour", Drop;
    /// Dropped: TCP, UDP or another protocol (not ICMP) to an address that has VIPs, on a
    /// port or protocol that is no VIP, and not an address of this host. Passed on, the
    /// kernel would route it back to the router, which sends it here again (a loop).
    DropNotVipPort = "not_vip_port", Drop;
    /// Dropped: a VIP packet whose IPv4 header checksum is wrong (RFC 1812 5.2.2).
    DropBadIpChecksum = "bad_ip_checksum", Drop;
    /// Dropped: a VIP packet with TTL / hop limit 0 or 1, which a router must not forward.
    DropTtl = "ttl_exceeded", Drop;
    /// Dropped: a VIP packet from a source no packet may come from (unspecified, loopback,
    /// multicast, broadcast or reserved, IPv4-mapped IPv6, or the VIP itself).
    DropMartian = "martian_source", Drop;
    /// Dropped: a VIP packet in a frame not addressed to this host's MAC (another host's,
    /// multicast, broadcast).
    DropNotOurMac = "not_our_mac", Drop;
    /// Dropped: an ICMP / ICMPv6 echo request to a VIP address whose checksum is wrong.
    DropBadIcmpChecksum = "bad_icmp_checksum", Drop;
    /// Answered: an ICMP/ICMPv6 echo request to a VIP address, replied to by the balancer.
    IcmpEchoAnswered = "icmp_echo_answered", Reply;
    /// Forwarded: an ICMP error about a VIP flow, sent to the backend that owns the flow.
    IcmpErrorSteered = "icmp_error_to_backend", Forward;
    /// Answered: a VIP packet too big once encapsulated, answered with "fragmentation
    /// needed" / "packet too big" so the client lowers its path MTU.
    TooBigSignalled = "too_big_signalled", Reply;
    /// Forwarded: a reply from a NAT target, rewritten (source the VIP, destination the
    /// client) and sent back to the client.
    NatReturned = "nat_returned", Forward;
    /// Forwarded: an ICMP error about a NAT flow from the target's side, translated
    /// (outer and quoted headers) and sent to the client.
    IcmpErrorToClient = "icmp_error_to_client", Forward;
    /// Passed: to a SNAT address (or from a client-preserving target) but of no NAT
    /// connection: this host's own traffic, left to the kernel unchanged.
    PassNotNat = "not_nat_flow", Pass;
    /// Dropped: a new NAT connection found no free (SNAT address, port) towards its target
    /// after every attempt (with the client's address preserved: its own port is taken
    /// towards that target).
    DropSnatExhausted = "snat_exhausted", Drop;
    /// Dropped: a TCP RST or an ICMP error for a NAT VIP without a NAT entry: there is no
    /// translation to send it with.
    DropNatNoEntry = "nat_no_entry", Drop;
}

// The table's order is the counter layout: each reason's index is its place in `ALL`.
const _: () = {
    let mut i = 0;
    while i < Reason::COUNT as usize {
        assert!(Reason::ALL[i] as usize == i);
        i += 1;
    }
};

/// Number of totals: the actions, then the reasons (`totals`).
pub const GLOBAL_COUNTERS: u32 = ACTIONS + Reason::COUNT;

/// Length of the `GLOBAL_STATS` array: one counter per (reason, action) pair.
pub const GLOBAL_SLOTS: u32 = Reason::COUNT * ACTIONS;

/// The `GLOBAL_STATS` counter of packets that got `action` (below `ACTIONS`) for `why`.
#[inline(always)]
pub const fn slot(action: u32, why: Reason) -> u32 {
    why.index() * ACTIONS + action
}

/// The totals per action (indexes `0..ACTIONS`) and per reason (`ACTIONS + reason`) of
/// the `GLOBAL_STATS` counters `slots` (`GLOBAL_SLOTS` of them, summed over CPUs).
pub fn totals(slots: &[u64; GLOBAL_SLOTS as usize]) -> [u64; GLOBAL_COUNTERS as usize] {
    let mut t = [0; GLOBAL_COUNTERS as usize];
    for (i, n) in slots.iter().enumerate() {
        let (why, action) = (i / ACTIONS as usize, i % ACTIONS as usize);
        t[action] += n;
        t[ACTIONS as usize + why] += n;
    }
    t
}

/// Counters of the decapsulator (`DECAP_STATS`).
pub mod decap {
    /// Outer header removed, inner packet handed to the kernel.
    pub const DECAPSULATED: u32 = 0;
    /// Not an encapsulated packet: passed unchanged.
    pub const PASS_NOT_ENCAP: u32 = 1;
    /// Encapsulated, but to an address this host does not decapsulate for: passed unchanged.
    pub const PASS_NOT_LOCAL: u32 = 2;
    /// Encapsulated to us but an outer fragment or inconsistent, or (at TC) with a VLAN
    /// tag still in the frame: passed unchanged.
    pub const PASS_MALFORMED: u32 = 3;
    /// Could not remove the outer header (`bpf_xdp_adjust_head` or `bpf_skb_adjust_room`
    /// failed): dropped.
    pub const DROP_ADJUST: u32 = 4;
    /// Number of decapsulator counters.
    pub const COUNT: u32 = 5;
    /// Names as shown by `xlb decap --stats`.
    pub const NAMES: [&str; COUNT as usize] = [
        "decapsulated",
        "not_encapsulated",
        "not_local",
        "malformed",
        "adjust_failed",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_packet_adds_to_its_action_and_its_reason() {
        let mut slots = [0u64; GLOBAL_SLOTS as usize];
        slots[slot(3, Reason::Forwarded) as usize] += 5;
        slots[slot(4, Reason::Forwarded) as usize] += 2;
        slots[slot(2, Reason::PassNotVip) as usize] += 7;
        slots[slot(1, Reason::DropNatNoEntry) as usize] += 1;
        let t = totals(&slots);
        assert_eq!(t[..ACTIONS as usize], [0, 1, 7, 5, 2]);
        let reason = |r: Reason| t[(ACTIONS + r.index()) as usize];
        assert_eq!(reason(Reason::Forwarded), 7);
        assert_eq!(reason(Reason::PassNotVip), 7);
        assert_eq!(reason(Reason::DropNatNoEntry), 1);
        assert_eq!(t.iter().sum::<u64>(), 2 * 15);
        // Every pair has its own counter.
        assert_eq!(slot(ACTIONS - 1, Reason::DropNatNoEntry), GLOBAL_SLOTS - 1);
    }
}
