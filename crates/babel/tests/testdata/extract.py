#!/usr/bin/env python3
"""Writes every Babel packet of a pcap (Ethernet, IPv6/UDP) as OUTDIR/NNN.hex.

Each file: comment lines, then "src [addr]:port", "dst [addr]:port", then
the UDP payload in hex, 32 bytes a line. The comment lists TLV types.
"""
import ipaddress
import os
import struct
import sys

NAMES = {0: "pad1", 1: "padn", 2: "ackreq", 3: "ack", 4: "hello", 5: "ihu", 17: "pc", 18: "challenge-request", 19: "challenge-reply",
         6: "router-id", 7: "next-hop", 8: "update", 9: "route-request",
         10: "seqno-request",
         16: "mac"}


def tlv_types(data):
    out, i = [], 0
    while i < len(data):
        t = data[i]
        out.append(NAMES.get(t, str(t)))
        i += 1 if t == 0 else 2 + (data[i + 1] if i + 1 < len(data) else 0)
    return out


def main(pcap, outdir, mode):
    os.makedirs(outdir, exist_ok=True)
    with open(pcap, "rb") as f:
        header = f.read(24)
        endian = "<" if header[:4] == b"\xd4\xc3\xb2\xa1" else ">"
        linktype = struct.unpack(endian + "I", header[20:24])[0]
        assert linktype == 1, f"unexpected link type {linktype}"
        n = 0
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                break
            incl = struct.unpack(endian + "I", rec[8:12])[0]
            frame = f.read(incl)
            if struct.unpack("!H", frame[12:14])[0] != 0x86DD:
                continue
            ip = frame[14:]
            if ip[6] != 17:
                continue
            src = ipaddress.IPv6Address(ip[8:24])
            dst = ipaddress.IPv6Address(ip[24:40])
            sport, dport, ulen = struct.unpack("!HHH", ip[40:46])
            payload = ip[48:40 + ulen]
            body_len = struct.unpack("!H", payload[2:4])[0]
            body = tlv_types(payload[4:4 + body_len])
            trailer = tlv_types(payload[4 + body_len:])
            with open(os.path.join(outdir, f"{n:03}.hex"), "w") as o:
                o.write(f"# babeld 1.12 ({mode}) body: {' '.join(body)}\n")
                if trailer:
                    o.write(f"# trailer: {' '.join(trailer)}\n")
                o.write(f"src [{src}]:{sport}\ndst [{dst}]:{dport}\n")
                for i in range(0, len(payload), 32):
                    o.write(payload[i:i + 32].hex() + "\n")
            n += 1
    print(f"{n} packets written to {outdir}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
