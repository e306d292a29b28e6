//! Indexes of the global counters (`GLOBAL_STATS`, `DECAP_STATS`) and their names.
//!
//! Every packet the balancer sees is counted once under the XDP action it got and once
//! under the reason for it, so `sum(actions) == sum(reasons) == packets seen`.

/// The XDP actions, in kernel numbering: `GLOBAL_STATS[action]` counts packets that got it.
pub const ACTION_NAMES: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Number of action counters (indexes `0..ACTIONS`).
pub const ACTIONS: u32 = 5;

/// Reason counters of the balancer, at `GLOBAL_STATS[ACTIONS + reason]`.
pub mod reason {
    /// Forwarded to a backend (`tx` or `redirect`).
    pub const FORWARDED: u32 = 0;
    /// Passed: not an IP packet (ARP, LLDP, two VLAN tags, ...).
    pub const PASS_NOT_IP: u32 = 1;
    /// Passed: IP header truncated or inconsistent, left to the kernel to judge.
    pub const PASS_BAD_IP: u32 = 2;
    /// Passed: not addressed to a VIP (address, port or protocol).
    pub const PASS_NOT_VIP: u32 = 3;
    /// Passed: encapsulated for a backend whose next hop has no resolved MAC address yet;
    /// the kernel forwards it and resolves the neighbour.
    pub const PASS_NO_NEIGH: u32 = 4;
    /// Dropped: a fragment addressed to a VIP address (ports unknown, flow unknowable).
    pub const DROP_FRAGMENT: u32 = 5;
    /// Dropped: VIP packet with a truncated or invalid TCP/UDP header.
    pub const DROP_MALFORMED: u32 = 6;
    /// Dropped: the VIP has no backend to take a new flow.
    pub const DROP_NO_BACKEND: u32 = 7;
    /// Dropped: no route to the backend (unreachable, blackhole, prohibited).
    pub const DROP_NO_ROUTE: u32 = 8;
    /// Dropped: too big for the egress MTU once encapsulated.
    pub const DROP_TOO_BIG: u32 = 9;
    /// Dropped: no headroom to encapsulate (`bpf_xdp_adjust_head` failed).
    pub const DROP_ENCAP_FAILED: u32 = 10;
    /// Dropped: forwarding is disabled on the interface, so the FIB lookup refuses.
    pub const DROP_FWD_DISABLED: u32 = 11;
    /// Dropped: no outer source address configured for the backend's family.
    pub const DROP_NO_SOURCE: u32 = 12;
    /// Dropped: the backend's family cannot carry this packet (IPv6 in IPv4).
    pub const DROP_FAMILY: u32 = 13;
    /// Answered: an ICMP/ICMPv6 echo request to a VIP address, replied to by the balancer.
    pub const ICMP_ECHO_ANSWERED: u32 = 14;
    /// Forwarded: an ICMP error about a VIP flow, sent to the backend that owns the flow.
    pub const ICMP_ERROR_STEERED: u32 = 15;
    /// Answered: a VIP packet too big once encapsulated, answered with "fragmentation
    /// needed" / "packet too big" so the client lowers its path MTU.
    pub const TOO_BIG_SIGNALLED: u32 = 16;
    /// Number of reasons.
    pub const COUNT: u32 = 17;

    /// What a reason means for the packet.
    pub const KIND_FORWARD: u8 = 0;
    pub const KIND_PASS: u8 = 1;
    pub const KIND_DROP: u8 = 2;
    /// The balancer answered the packet itself.
    pub const KIND_REPLY: u8 = 3;

    /// The kind of each reason, by index.
    pub const KINDS: [u8; COUNT as usize] = [
        KIND_FORWARD,
        KIND_PASS,
        KIND_PASS,
        KIND_PASS,
        KIND_PASS,
        KIND_DROP,
        KIND_DROP,
        KIND_DROP,
        KIND_DROP,
        KIND_DROP,
        KIND_DROP,
        KIND_DROP,
        KIND_DROP,
        KIND_DROP,
        KIND_REPLY,
        KIND_FORWARD,
        KIND_REPLY,
    ];

    /// Names as shown by `xlb stats` and in `xlb_packets_total{reason=...}`.
    pub const NAMES: [&str; COUNT as usize] = [
        "forwarded",
        "not_ip",
        "bad_ip_header",
        "not_vip",
        "no_neighbour",
        "fragment",
        "malformed",
        "no_backend",
        "no_route",
        "too_big",
        "encap_failed",
        "forwarding_disabled",
        "no_source_address",
        "family_mismatch",
        "icmp_echo_answered",
        "icmp_error_to_backend",
        "too_big_signalled",
    ];
}

/// Length of the `GLOBAL_STATS` array.
pub const GLOBAL_COUNTERS: u32 = ACTIONS + reason::COUNT;

/// Counters of the decapsulator (`DECAP_STATS`).
pub mod decap {
    /// Outer header removed, inner packet handed to the kernel.
    pub const DECAPSULATED: u32 = 0;
    /// Not an encapsulated packet: passed unchanged.
    pub const PASS_NOT_ENCAP: u32 = 1;
    /// Encapsulated, but to an address this host does not decapsulate for: passed unchanged.
    pub const PASS_NOT_LOCAL: u32 = 2;
    /// Encapsulated to us but an outer fragment or inconsistent: passed unchanged.
    pub const PASS_MALFORMED: u32 = 3;
    /// Could not move the packet start (`bpf_xdp_adjust_head` failed): dropped.
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
