#!/usr/bin/env bash
# run.sh - throughput harness: plain veth, re6st's udp/tcp/quic tunnels,
# OpenVPN 2.6 (as re6stnet runs it, with AES-256-GCM, and over TCP) and
# boringtun, measured side by side in one pass on this machine.
#
# usage: sudo benches/throughput/run.sh [ROW...]
#   ROW: veth openvpn-none openvpn-aes openvpn-tcp boringtun re6st-udp re6st-tcp
#        re6st-quic
#        (default: all of them, in that order)
# env:   RUNS=3 DURATION=8 UDP_LEN=1400 PING_COUNT=20 QUIET_PCT=25 QUIET_WAIT=60
#        TESTS="tcp1 tcp4 udp ping" (a subset runs only those tests)
#        RE6ST_ARGS="--busy-poll-us 200" (more options of `re6st tunnel up`)
#        RESULTS=benches/throughput/results/<date>  RE6ST=<path to re6st binary>
#        (default: built here with `cargo build --release`)
#
# For each row: iperf3 TCP 1 stream and 4 streams, UDP with UDP_LEN-byte
# datagrams at full rate (received rate and loss), ping RTT, and the CPU time
# of the tunnel processes (both ends) per gigabit received. Writes
# RESULTS/runs.tsv (every run) and RESULTS/table.md (medians and ratios
# against OpenVPN and boringtun) and prints the table.
#
# Adding a row is one function `row_<name>` below: it starts the tunnel
# between $NS_A and $NS_B (namespaces and veth already exist), appends the
# tunnel PIDs to TUNNEL_PIDS, sets TARGET to B's overlay address and returns
# 0; or it prints why it cannot run and returns 2 (the row is skipped).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"

[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (namespaces, TUN devices)" >&2; exit 1; }
for t in iperf3 ip ping python3; do
    command -v "$t" >/dev/null || { echo "run.sh: $t missing: run $HERE/install.sh" >&2; exit 1; }
done

ALL_ROWS=(veth openvpn-none openvpn-aes openvpn-tcp boringtun re6st-udp re6st-tcp re6st-quic)
ROWS=("$@")
[ ${#ROWS[@]} -gt 0 ] || ROWS=("${ALL_ROWS[@]}")

RESULTS=${RESULTS:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
RUNS_TSV=$RESULTS/runs.tsv
printf 'row\ttest\trun\tmbps\tloss_pct\tretransmits\ttunnel_cpu_s\tgbit\tsys_busy_pct\tbusy_before_pct\n' >"$RUNS_TSV"
WORK=$(mktemp -d -t re6st-throughput.XXXXXX)
ROW_SEQ=0
trap 'row_end; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- rows ----

row_veth() {
    TARGET=$UL_B
}

# OpenVPN 2.6 tap tunnel, options after re6stnet's (re6st/plib.py) adapted to
# 2.6 as the anchors found necessary: '--cipher none' alone now negotiates
# AES-256-GCM, so no-encryption is '--data-ciphers none --cipher none';
# --ncp-disable no longer exists; the tap MTU is set directly (1400) because
# re6st's --link-mtu values drop full-size frames on 2.6. Over TCP (the
# anchor 05-openvpn-tcp-aes256gcm.sh): '--proto tcp-server' /
# 'tcp-client' and no MTU options, OpenVPN's default 1500 as re6st keeps it.
openvpn_pki() {
    [ -f "$WORK/pki/client.crt" ] && return 0
    mkdir -p "$WORK/pki"
    (
        cd "$WORK/pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt \
            -days 2 -subj "/CN=throughput-ca" 2>/dev/null
        for n in server client; do
            openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr \
                -subj "/CN=$n" 2>/dev/null
            openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                -days 2 -out $n.crt 2>/dev/null
        done
    )
}

openvpn_row() {
    local cipher=$1 proto=${2:-udp}
    command -v openvpn >/dev/null || { echo "openvpn not installed"; return 2; }
    openvpn_pki
    cat >"$ROW_WORK/up.sh" <<'EOF'
#!/bin/sh
# $1 = overlay address/prefix; OpenVPN exports $dev and $tun_mtu
ip link set dev "$dev" up mtu "$tun_mtu"
ip addr add "$1" dev "$dev"
EOF
    chmod +x "$ROW_WORK/up.sh"
    local common=(--dev-type tap --persist-tun --persist-key --script-security 2
        --ca "$WORK/pki/ca.crt" --verb 3 --ping-exit 120)
    local srv_proto cli_proto
    if [ "$proto" = tcp ]; then
        srv_proto=(--proto tcp-server)
        cli_proto=(--remote "$UL_B" 1194 tcp-client)
    else
        common+=(--tun-mtu 1400 --mtu-disc yes)
        srv_proto=(--proto udp4)
        cli_proto=(--remote "$UL_B" 1194 udp4)
    fi
    if [ "$cipher" = none ]; then
        common+=(--cipher none --data-ciphers none)
    else
        common+=(--data-ciphers "$cipher")
    fi
    bg_in_ns "$NS_B" "$ROW_WORK/server.log" openvpn "${common[@]}" \
        --dev tapb --up "$ROW_WORK/up.sh 198.19.0.2/24" \
        --tls-server --mode server --dh none --max-clients 10 \
        --local "$UL_B" --port 1194 "${srv_proto[@]}" \
        --cert "$WORK/pki/server.crt" --key "$WORK/pki/server.key"
    TUNNEL_PIDS+=("$LAST_PID")
    sleep 1
    bg_in_ns "$NS_A" "$ROW_WORK/client.log" openvpn "${common[@]}" \
        --dev tapa --up "$ROW_WORK/up.sh 198.19.0.1/24" \
        --nobind --client --resolv-retry 0 --tls-exit "${cli_proto[@]}" \
        --cert "$WORK/pki/client.crt" --key "$WORK/pki/client.key"
    TUNNEL_PIDS+=("$LAST_PID")
    TARGET=198.19.0.2
    wait_ping "$TARGET" || { tail -20 "$ROW_WORK/server.log" "$ROW_WORK/client.log" >&2; return 1; }
}
row_openvpn-none() { openvpn_row none; }
row_openvpn-aes() { openvpn_row AES-256-GCM; }
row_openvpn-tcp() { openvpn_row AES-256-GCM tcp; }

# boringtun 0.7 (userspace WireGuard), configured with `wg` through its UAPI
# socket. --threads 1: the anchors found 4 threads (the default) reorder one
# flow's packets on 2 cores and are much slower.
row_boringtun() {
    local bt
    bt=$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")
    [ -x "$bt" ] || { echo "boringtun-cli not installed (run install.sh)"; return 2; }
    command -v wg >/dev/null || { echo "wg not installed (run install.sh)"; return 2; }
    # the UAPI socket directory is shared by all namespaces: unique names
    local ia=tpw$$a ib=tpw$$b
    mkdir -p /var/run/wireguard
    CLEANUP_FILES+=(/var/run/wireguard/$ia.sock /var/run/wireguard/$ib.sock)
    (umask 077; wg genkey >"$ROW_WORK/a.key"; wg genkey >"$ROW_WORK/b.key")
    bg_in_ns "$NS_A" "$ROW_WORK/bt-a.log" "$bt" --foreground --disable-drop-privileges --threads 1 "$ia"
    TUNNEL_PIDS+=("$LAST_PID")
    bg_in_ns "$NS_B" "$ROW_WORK/bt-b.log" "$bt" --foreground --disable-drop-privileges --threads 1 "$ib"
    TUNNEL_PIDS+=("$LAST_PID")
    for _ in $(seq 1 50); do
        [ -S /var/run/wireguard/$ia.sock ] && [ -S /var/run/wireguard/$ib.sock ] && break
        sleep 0.2
    done
    ip netns exec "$NS_A" wg set "$ia" private-key "$ROW_WORK/a.key" listen-port 51820 \
        peer "$(wg pubkey <"$ROW_WORK/b.key")" endpoint "$UL_B:51820" allowed-ips 198.19.0.2/32
    ip netns exec "$NS_B" wg set "$ib" private-key "$ROW_WORK/b.key" listen-port 51820 \
        peer "$(wg pubkey <"$ROW_WORK/a.key")" endpoint "$UL_A:51820" allowed-ips 198.19.0.1/32
    ip -n "$NS_A" addr add 198.19.0.1/24 dev "$ia"
    ip -n "$NS_B" addr add 198.19.0.2/24 dev "$ib"
    ip -n "$NS_A" link set "$ia" mtu 1420 up
    ip -n "$NS_B" link set "$ib" mtu 1420 up
    TARGET=198.19.0.2
    wait_ping "$TARGET" || { tail -20 "$ROW_WORK/bt-a.log" "$ROW_WORK/bt-b.log" >&2; return 1; }
}

# re6st's own tunnels: `re6st tunnel up` in each namespace (see re6st_row).
re6st_bin() {
    if [ -z "${RE6ST:-}" ]; then
        log "building re6st (release)"
        (cd "$REPO" && cargo build --release --quiet --bin re6st) >&2
        RE6ST=${CARGO_TARGET_DIR:-$REPO/target}/release/re6st
    fi
    [ -x "$RE6ST" ]
}

re6st_row() {
    local proto=$1
    re6st_bin || { echo "re6st binary not found"; return 2; }
    "$RE6ST" tunnel up --help 2>/dev/null | grep -q -- "- $proto:" ||
        { echo "this re6st cannot bring up a $proto tunnel ('re6st tunnel up --transport $proto')"; return 2; }
    [ -f "$WORK/re6st-pki/ca.crt" ] || "$RE6ST" tunnel pki --dir "$WORK/re6st-pki" --nodes 2
    local pki=$WORK/re6st-pki
    local extra
    read -r -a extra <<<"${RE6ST_ARGS:-}"
    bg_in_ns "$NS_B" "$ROW_WORK/re6st-b.log" "$RE6ST" tunnel up --transport "$proto" "${extra[@]}" \
        --ca "$pki/ca.crt" --key "$pki/node2.key" --cert "$pki/node2.crt" \
        --listen "[::]:3260" --addr fd00:198:19::2/64
    TUNNEL_PIDS+=("$LAST_PID")
    sleep 0.5
    bg_in_ns "$NS_A" "$ROW_WORK/re6st-a.log" "$RE6ST" tunnel up --transport "$proto" "${extra[@]}" \
        --ca "$pki/ca.crt" --key "$pki/node1.key" --cert "$pki/node1.crt" \
        --listen "[::]:3260" --peer "[$UL6_B]:3260,2/16" --once \
        --addr fd00:198:19::1/64
    TUNNEL_PIDS+=("$LAST_PID")
    TARGET=fd00:198:19::2
    wait_ping "$TARGET" || { tail -20 "$ROW_WORK/re6st-a.log" "$ROW_WORK/re6st-b.log" >&2; return 1; }
}
row_re6st-udp() { re6st_row udp; }
row_re6st-tcp() { re6st_row tcp; }
row_re6st-quic() { re6st_row quic; }

# ---------------------------------------------------------------- main ----

for row in "${ROWS[@]}"; do
    declare -F "row_$row" >/dev/null || { echo "run.sh: unknown row '$row' (rows: ${ALL_ROWS[*]})" >&2; exit 1; }
done
for row in "${ROWS[@]}"; do
    log "=== $row"
    ROW_NAME=$row
    row_begin
    rc=0
    # in this shell (not $(...)): the row records PIDs and TARGET
    "row_$row" >"$ROW_WORK/why" 2>"$ROW_WORK/setup.err" || rc=$?
    why=$(cat "$ROW_WORK/why")
    if [ $rc -eq 0 ]; then
        measure "$row"
    elif [ $rc -eq 2 ]; then
        log "$row skipped: $why"
        printf '%s\tskipped\t\t%s\n' "$row" "$why" >>"$RESULTS/skipped.tsv"
    else
        log "$row FAILED to come up: $why"
        cat "$ROW_WORK/setup.err" >&2
        printf '%s\tfailed\t\t%s\n' "$row" "$why" >>"$RESULTS/skipped.tsv"
    fi
    row_end
done
python3 "$HERE/table.py" "$RESULTS" | tee "$RESULTS/table.md"
log "results in $RESULTS"
