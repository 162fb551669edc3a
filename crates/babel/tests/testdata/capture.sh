#!/bin/sh
# Regenerates the babeld captures in this directory (needs root, babeld,
# tcpdump, python3). Two network namespaces joined by a veth pair each run
# babeld; tcpdump records UDP 6696 on one side; extract.py writes one
# *.hex file per interesting packet. The namespaces are removed on exit.
#
#   usage: capture.sh OUTDIR [plain|mac|blake2s]
#
# With "mac" (hmac-sha256) or "blake2s" (blake2s128), both daemons sign
# with the 32-byte key in mac.key.
set -eu
out=$(realpath "$1")
mode=${2:-plain}
here=$(dirname "$(realpath "$0")")
key=$(cat "$here/mac.key")
A=bwcapA$$
B=bwcapB$$
tmp=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

ip netns add "$A"
ip netns add "$B"
ip link add va netns "$A" type veth peer name vb netns "$B"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set va up
ip -n "$B" link set vb up
sleep 2 # DAD for the link-local addresses

# Routes for A to redistribute (protocol static = 4).
for p in 2001:db8:a:1::/64 2001:db8:a:2::/64 2001:db8:a:3::/64 \
         2001:db8:a:100::/56 2001:db8:ff::/48; do
    ip -n "$A" -6 route add unreachable "$p" proto static
done
ip -n "$A" -6 route add unreachable 2001:db8:b::/48 from 2001:db8:c::/48 proto static
ip -n "$A" -6 route add unreachable ::/0 from 2001:db8:42::/48 proto static
ip -n "$A" route add unreachable 10.1.2.0/24 proto static
ip -n "$A" route add unreachable 10.1.3.0/24 proto static

iface_opts="type wired enable-timestamps true v4-via-v6 true"
keyconf=""
case "$mode" in
mac) keyconf="key id k1 type hmac-sha256 value $key" ;;
blake2s) keyconf="key id k1 type blake2s128 value $key" ;;
esac
if [ -n "$keyconf" ]; then
    iface_opts="$iface_opts key k1"
fi

run_babeld() { # ns iface name
    conf="$tmp/$3.conf"
    {
        [ -n "$keyconf" ] && echo "$keyconf"
        echo "redistribute local deny"
        echo "redistribute proto 4 allow"
        echo "interface $2 $iface_opts"
    } > "$conf"
    ip netns exec "$1" babeld -c "$conf" -I "$tmp/$3.pid" -S "$tmp/$3.state" \
        -d 1 -L "$tmp/$3.log" &
    pids="$pids $!"
}

ip netns exec "$A" tcpdump -i va -U -w "$tmp/cap.pcap" udp port 6696 \
    2> "$tmp/tcpdump.log" &
pids="$pids $!"
sleep 1
run_babeld "$A" va a
run_babeld "$B" vb b
sleep 12
python3 "$here/extract.py" "$tmp/cap.pcap" "$out" "$mode"
echo "babeld A log:"; tail -5 "$tmp/a.log" || true
