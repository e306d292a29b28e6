//! How a packet is treated by the resolver that finds its VIP and backend (the data plane's
//! `select::resolve`, mirrored by userspace's `Balancer::predict`): which of its steps
//! apply, decided from the headers alone so that both sides decide it the same way.

use crate::{
    maps::PROTO_TCP,
    parse::{Headers, TCP_ACK, TCP_RST, TCP_SYN},
};

/// The packet starts a flow (a TCP SYN without ACK or RST): it skips the flow table, takes
/// the current Maglev choice and overwrites its entry, so a client that reuses a port
/// reaches a backend that takes new flows, never a drained one or the old choice of a
/// changed table (as Katran does) — unless the entry was made by this very SYN
/// (`FlowValue::syn_seq`: a retransmission) and its backend still keeps flows: that
/// connection is already half open there, and moving its retransmitted SYN to another
/// backend would answer the client twice and have the second reset it. A backend failing
/// its checks (`ADMIN_F_FAILING`) keeps it only as a NAT target that has answered the
/// connection: otherwise the first SYN may never have reached it. Counted as a new flow
/// unless it was such a retransmission.
pub const START: u32 = 1;
/// A new choice is remembered in the flow table (not for a TCP RST, which ends its flow,
/// nor for an ICMP error about the flow).
pub const REMEMBER: u32 = 2;
/// A packet that creates a flow entry counts as a new flow (UDP and other datagrams; TCP
/// counts only `START` packets).
pub const COUNT_NEW: u32 = 4;

/// The resolver's `START` / `REMEMBER` / `COUNT_NEW` bits for a TCP or UDP packet to a VIP.
#[inline(always)]
pub fn how(h: &Headers) -> u32 {
    if h.proto != PROTO_TCP {
        return REMEMBER | COUNT_NEW;
    }
    match h.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) {
        TCP_SYN => START | REMEMBER,
        f if f & TCP_RST != 0 => 0,
        _ => REMEMBER,
    }
}

/// The `how` bits of an ICMP error steered to the backend of the flow it quotes: nothing
/// remembered, nothing counted as new.
pub const ICMP_ERROR: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{L4, TCP_FIN};

    fn headers(proto: u8, flags: u8) -> Headers {
        Headers {
            src: [0; 16],
            dst: [0; 16],
            l3_offset: 14,
            l4_offset: 34,
            ip_len: 40,
            sport: 1,
            dport: 2,
            vlan: false,
            family: 4,
            proto,
            tos: 0,
            dont_fragment: true,
            tcp_flags: flags,
            ttl: 64,
            l4: L4::Ports,
            tcp_seq: 0,
        }
    }

    #[test]
    fn roles() {
        assert_eq!(how(&headers(PROTO_TCP, TCP_SYN)), START | REMEMBER);
        assert_eq!(how(&headers(PROTO_TCP, TCP_SYN | TCP_ACK)), REMEMBER);
        assert_eq!(how(&headers(PROTO_TCP, TCP_SYN | TCP_RST)), 0);
        assert_eq!(how(&headers(PROTO_TCP, TCP_RST | TCP_ACK)), 0);
        assert_eq!(how(&headers(PROTO_TCP, TCP_ACK | TCP_FIN)), REMEMBER);
        assert_eq!(how(&headers(17, 0)), REMEMBER | COUNT_NEW);
    }
}
