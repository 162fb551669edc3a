#!/usr/bin/env python3
"""Summarise a throughput run: RESULTS/runs.tsv -> a markdown table.

Medians over the runs of each test. "CPU s/Gbit" is the CPU time of the
tunnel processes of both ends divided by the gigabits received (a plain
veth has no tunnel process). Ratios compare each row with OpenVPN as
re6stnet runs it ("openvpn-none") and with boringtun, measured in the same
pass: throughput as row / reference (higher is better), CPU as
row / reference (lower is better). OpenVPN over TCP ("openvpn-tcp") is
the reference of the tcp transport.

usage: table.py RESULTS_DIR
"""

import csv
import os
import statistics
import sys

# openvpn-tcp: the reference of the tcp transport (goal: re6st-tcp >= 3x)
REFS = [("OpenVPN", "openvpn-none"), ("boringtun", "boringtun"),
        ("OpenVPN-TCP", "openvpn-tcp")]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return None if v != v else v  # NaN -> None


def fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def ratio(a, b, spec="{:.2f}x"):
    return "-" if a is None or not b else spec.format(a / b)


def main():
    res = sys.argv[1]
    rows = {}
    order = []
    with open(os.path.join(res, "runs.tsv")) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            name = r["row"]
            if name not in rows:
                rows[name] = {}
                order.append(name)
            rows[name].setdefault(r["test"], []).append(r)

    summary = {}
    for name, tests in rows.items():
        s = {}
        for test in ("tcp1", "tcp4", "udp"):
            runs = tests.get(test, [])
            s[test] = median([num(r["mbps"]) for r in runs])
            per = []
            for r in runs:
                cpu, gbit = num(r["tunnel_cpu_s"]), num(r["gbit"])
                if cpu is not None and gbit and name != "veth":
                    per.append(cpu / gbit)
            s[test + "_cpu"] = median(per)
            s[test + "_loss"] = median([num(r["loss_pct"]) for r in runs])
            s[test + "_busy"] = median([num(r["busy_before_pct"]) for r in runs])
        s["ping"] = median([num(r["mbps"]) for r in tests.get("ping", [])])
        summary[name] = s

    head = ["row", "TCP 1 Mbit/s", "TCP 4 Mbit/s", "UDP 1400 B Mbit/s (loss %)",
            "ping ms", "CPU s/Gbit TCP 1", "CPU s/Gbit TCP 4"]
    for label, ref in REFS:
        if ref in summary:
            head += ["TCP 1 vs %s" % label, "TCP 4 vs %s" % label,
                     "CPU/Gbit vs %s" % label]
    head.append("machine busy before, %")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for name in order:
        s = summary[name]
        cells = [name, fmt(s["tcp1"]), fmt(s["tcp4"]),
                 "%s (%s)" % (fmt(s["udp"]), fmt(s["udp_loss"], "{:.1f}")),
                 fmt(s["ping"], "{:.3f}"), fmt(s["tcp1_cpu"], "{:.2f}"),
                 fmt(s["tcp4_cpu"], "{:.2f}")]
        for _, ref in REFS:
            if ref in summary:
                r = summary[ref]
                cells += [ratio(s["tcp1"], r["tcp1"]), ratio(s["tcp4"], r["tcp4"]),
                          ratio(s["tcp1_cpu"], r["tcp1_cpu"])]
        cells.append(fmt(s["tcp1_busy"]))
        out.append("| " + " | ".join(cells) + " |")
    skipped = os.path.join(res, "skipped.tsv")
    if os.path.exists(skipped):
        out.append("")
        with open(skipped) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                out.append("- %s %s: %s" % (parts[0], parts[1], parts[-1]))
    print("\n".join(out))


if __name__ == "__main__":
    main()
