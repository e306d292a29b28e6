#!/usr/bin/env python3
"""Executed BPF instructions of the balancer's packet paths, for `cargo xtask bench`.

Counting is done by ../shared/tools/bpf-path-count, loaded here as a library and left
unchanged; this script adds what the balancer's paths need and the tool does not have:

- the helpers `bpf_jiffies64`, `bpf_ktime_get_coarse_ns` and `bpf_get_prandom_u32`
  (shown as `bpf_user_rnd_u32` in translated code; a fixed value, so counts repeat);
- emulated map addresses numbered by first use rather than by map id, so a machine whose
  map ids have grown past the tool's address space still counts;
- the frames: IPv6 as well as IPv4, UDP as well as TCP, and a NAT target's replies, built
  from the translated SYN the program sent (so they carry the SNAT address and port it
  chose).

Usage: path-count.py TOOL PROG_ID KIND VIP CLIENT PORT [NON_VIP]
  KIND tcp: a SYN (new flow), the ACK that follows (established), a packet to NON_VIP
  KIND udp: a datagram (new flow) and the next (tracked)
  KIND nat: a SYN, the target's SYN-ACK, the client's ACK (established), the target's ACK;
            then a second connection's SYN and SYN-ACK
The family follows the addresses. Prints the tool's lines, one per packet:
"== xlb PATH: N BPF insns executed (xlated), retval R, out B bytes".
"""
import importlib.machinery
import importlib.util
import ipaddress
import struct
import sys

LB_MAC, PEER_MAC = b"\0\0\0\0\0\2", b"\0\0\0\0\0\1"
MAP_SPAN = 0x1_0000_0000
TOOL = None  # the loaded tool (`load_tool`)


def load_tool(path):
    loader = importlib.machinery.SourceFileLoader("bpf_path_count", path)
    spec = importlib.util.spec_from_loader("bpf_path_count", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def frame(src, dst, sport, dport, tcp_flags=None, payload=b""):
    """An Ethernet frame from the peer to the balancer, with valid IP and L4 checksums (the
    tool's `csum`)."""
    checksum = TOOL.csum
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    proto = 6 if tcp_flags is not None else 17
    if tcp_flags is not None:
        l4 = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, tcp_flags, 8192, 0, 0))
    else:
        l4 = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0))
    l4 += payload
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, proto, len(l4))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(l4), proto)
    at = 16 if proto == 6 else 6
    l4[at:at + 2] = struct.pack("!H", checksum(pseudo + bytes(l4)) or 0xFFFF)
    if src.version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                                   src.packed, dst.packed))
        ip[10:12] = struct.pack("!H", checksum(bytes(ip)))
        ethertype = b"\x08\x00"
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src.packed, dst.packed)
        ethertype = b"\x86\xdd"
    return LB_MAC + PEER_MAC + ethertype + bytes(ip) + bytes(l4)


def reply_to(out, tcp_flags):
    """The target's answer to the translated packet `out` (IPv4 TCP): addresses and ports
    swapped."""
    ip = out[14:]
    src, dst = ipaddress.ip_address(ip[12:16]), ipaddress.ip_address(ip[16:20])
    l4 = ip[(ip[0] & 0xF) * 4:]
    sport, dport = struct.unpack("!HH", l4[:4])
    return frame(dst, src, dport, sport, tcp_flags)


def counter(tool):
    class Emu(tool.Emu):
        def map(self, mid):
            m = self.maps.get(mid)
            if m is None:
                m = self.maps[mid] = tool.MapInfo(mid)
                m.base = 0x10_0000_0000 + len(self.maps) * MAP_SPAN
            return m

        def map_by_addr(self, a):
            for m in self.maps.values():
                if m.base <= a < m.base + MAP_SPAN:
                    return m
            return None

        def helper(self, name, r, pc):
            if name == "bpf_jiffies64":
                return self.jiffies
            if name == "bpf_ktime_get_coarse_ns":
                return 10**12
            if name in ("bpf_user_rnd_u32", "bpf_get_prandom_u32"):
                return 0x2545_F491
            return super().helper(name, r, pc)

        def send(self, pkt, label):
            """Runs one frame and returns the frame the program left behind."""
            self.run(pkt, "xlb " + label)
            d0, d1 = self.mem.rd(self.ctx, 8), self.mem.rd(self.ctx + 8, 8)
            return self.mem.read(d0, d1 - d0)

    return Emu


def main(argv):
    if len(argv) < 7:
        sys.exit(__doc__.split("\n\n")[2])
    global TOOL
    tool, prog, kind, vip, client, port = argv[1:7]
    TOOL = load_tool(tool)
    emu = counter(TOOL)(int(prog))
    port = int(port)
    if kind == "tcp":
        emu.send(frame(client, vip, 41000, port, 0x02), "TCP SYN (new flow)")
        emu.send(frame(client, vip, 41000, port, 0x10), "TCP ACK (established)")
        emu.send(frame(client, argv[7], 41000, port, 0x10), "non-VIP")
    elif kind == "udp":
        payload = b"xlb path count!!"
        emu.send(frame(client, vip, 41000, port, None, payload), "UDP first")
        emu.send(frame(client, vip, 41000, port, None, payload), "UDP tracked")
    elif kind == "nat":
        syn = emu.send(frame(client, vip, 41000, port, 0x02), "TCP SYN (new flow)")
        emu.send(reply_to(syn, 0x12), "NAT reply")
        emu.send(frame(client, vip, 41000, port, 0x10), "TCP ACK (established)")
        emu.send(reply_to(syn, 0x10), "NAT reply again")
        # A second connection from the client: its next hop is cached by now.
        syn = emu.send(frame(client, vip, 41001, port, 0x02), "NAT second SYN")
        emu.send(reply_to(syn, 0x12), "NAT second reply")
    else:
        sys.exit("path-count.py: unknown kind " + kind)


if __name__ == "__main__":
    main(sys.argv)
