#!/usr/bin/env python3
"""Where a SYN into a full flow table spends the time a SYN into a table with room does not.

Reads `perf script -F time,ip,sym` of a system-wide, call-graph `perf record` of
`xlb-bench dataplane` (see the README's Performance section) and compares two of its rows,
both 5 batches of the same number of calls: "IPv4 TCP SYN, new flow, fresh key into a table
with room" and "... into a full table" (with the IPv6 one after it, so that window holds two
rows). The rows are found by the bench's order and the stacks:

- room: after the last NAT SYN sample (a stack through `try_port`) and before the first new
  UDP flow's (`new_datagram`);
- full: after the last sample of the userspace fill (`bpf_map_update_value` under a syscall)
  and before the first of the net-cost rows (`xlb_balancer_bench`).

Only samples inside the balancer (`xlb_balancer` in the stack, not `xlb_balancer_bench`) are
counted, split into: inside `bpf_lru_pop_free` (the LRU's own locked section: its list
rotation and, in a full table, the eviction of victims and their deletion from their
buckets), elsewhere inside `htab_lru_map_update_elem` (the new key's bucket, locked), and the
rest of the program. On a VM without a PMU, perf samples on a timer whose interrupt waits for
interrupts to be enabled again, so time under a spinlock taken with `irqsave` lands on the
unlock: the split is by locked section, not by instruction.

Usage: perf script -i perf.data -F time,ip,sym | bench/lru-profile.py
"""
import re
import sys


def samples(lines):
    """(time, [symbols, leaf first]) per sample."""
    out, cur = [], None
    for line in lines:
        m = re.match(r"^\s*(\d+\.\d+):", line)
        if m:
            cur = (float(m.group(1)), [])
            out.append(cur)
        elif cur is not None:
            parts = line.split()
            if len(parts) >= 2:
                cur[1].append(parts[1])
    return out


def has(stack, suffix):
    return any(s.endswith(suffix) for s in stack)


def main():
    all_ = samples(sys.stdin)
    if not all_:
        sys.exit("lru-profile: no samples on standard input")
    nat_syn = [t for t, s in all_ if has(s, "_try_port")]
    udp_new = [t for t, s in all_ if has(s, "_new_datagram")]
    fill = [t for t, s in all_ if "bpf_map_update_value" in s and "__sys_bpf" in s]
    net = [t for t, s in all_ if has(s, "_xlb_balancer_bench")]
    missing = [
        name
        for name, found in [
            ("the NAT SYN row (try_port)", nat_syn),
            ("the new UDP flow row (new_datagram)", udp_new),
            ("the full table's fill (bpf_map_update_value)", fill),
            ("the net-cost rows (xlb_balancer_bench)", net),
        ]
        if not found
    ]
    if missing:
        sys.exit(f"lru-profile: not in the samples: {', '.join(missing)} (was it `xlb-bench dataplane`?)")
    last_nat = max(nat_syn)
    windows = [
        ("table with room (1 row)", last_nat, min(t for t in udp_new if t > last_nat), 1),
        ("full table (2 rows)", max(fill), min(t for t in net if t > max(fill)), 2),
    ]
    per_row = []
    for name, a, b, rows in windows:
        n = {"lru": 0, "bucket": 0, "rest": 0}
        for t, s in all_:
            if not (a < t < b) or not has(s, "_xlb_balancer") or has(s, "_xlb_balancer_bench"):
                continue
            if has(s, "_new_datagram") or has(s, "_try_port"):
                continue
            if "bpf_lru_pop_free" in s:
                n["lru"] += 1
            elif "htab_lru_map_update_elem" in s:
                n["bucket"] += 1
            else:
                n["rest"] += 1
        row = {k: v / rows for k, v in n.items()}
        per_row.append(row)
        total = sum(row.values())
        print(
            f"{name}, {b - a:.2f} s: {total:.0f} samples in the balancer per row: "
            f"LRU pop {row['lru']:.0f}, bucket {row['bucket']:.0f}, rest {row['rest']:.0f}"
        )
    room, full = per_row
    extra = sum(full.values()) - sum(room.values())
    if extra > 0:
        print(
            f"full / room: {sum(full.values()) / sum(room.values()):.2f}; of the difference, "
            + ", ".join(f"{k} {100 * (full[k] - room[k]) / extra:.0f}%" for k in room)
        )


if __name__ == "__main__":
    main()
