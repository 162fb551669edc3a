#!/usr/bin/env bash
# benches/failover/run.sh - outage after a silent link cut, side by side:
#
#   re6st      re6st nodes at default settings (`re6st demo --nodes 2`: a
#              registry host and two nodes, one tunnel between each pair)
#   babeld-re6stnet  babeld as re6stnet runs it (-h 15 -H 15, re6stnet's
#              `default max-rtt-penalty 5000 rtt-max 500 rtt-decay 125`)
#   babeld-default   babeld with its own defaults (hello 4 s)
#
# Topology of the babeld rows (fresh namespaces per run, unique names):
#
#        A ---- B        A-B direct (veth), A-C-B the detour (veths);
#         \    /         each node announces fd00:f0::N/128 on lo.
#           C
#
# A 10 Hz ping (ping -D) runs from A's address to B's; 3 s into it, A-B is
# cut silently (nftables drops everything on the A-B veths, the link stays
# up, as MeshBed::cut does with the underlay); the outage is the longest gap
# between replies minus the ping interval. RUNS runs per row, median kept.
# Every process is killed by its PID and the namespaces are deleted when a
# run ends, even on failure.
#
# Usage: sudo benches/failover/run.sh [ROW...]   (default: all rows)
# Env: RUNS=3 HOLD=70 (seconds the cut lasts in babeld rows) RE6ST=<binary>
set -euo pipefail

RUNS=${RUNS:-3}
HOLD=${HOLD:-70}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROWS=("$@")
[ ${#ROWS[@]} -eq 0 ] && ROWS=(re6st babeld-re6stnet babeld-default)

[ "$(id -u)" -eq 0 ] || { echo "run.sh needs root (namespaces)" >&2; exit 1; }
for t in ip nft ping babeld; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install iproute2 nftables iputils-ping babeld)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/re6st-failover.XXXXXX)
PIDS=()
NSS=()
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup_run() {
    set +e
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    local ns
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    PIDS=()
    NSS=()
    set -e
}
trap 'cleanup_run; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# Longest gap between consecutive reply timestamps of a `ping -D` log, minus
# the 0.1 s interval, in seconds (also from the start of the cut window).
gap() {
    awk -v t0="$2" '/bytes from/ { gsub(/[\[\]]/, "", $1); t = $1 + 0;
            if (t >= t0 - 0.5) { if (last != "" && t - last > g) g = t - last; }
            last = t }
        END { printf "%.1f\n", (g > 0.1 ? g - 0.1 : 0) }' "$1"
}

babeld_run() { # $1: re6stnet|default  $2: run number
    local kind=$1 run=$2 tag=fo$$r$2
    local A=$tag-a B=$tag-b C=$tag-c
    NSS=("$A" "$B" "$C")
    local ns
    for ns in "$A" "$B" "$C"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.forwarding=1
        # Link-local addresses usable at once (babeld skips an interface
        # that has none yet).
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0
    done
    # veth names: <here><there>
    ip link add ab netns "$A" type veth peer name ba netns "$B"
    ip link add ac netns "$A" type veth peer name ca netns "$C"
    ip link add cb netns "$C" type veth peer name bc netns "$B"
    local i=1
    for ns in "$A" "$B" "$C"; do
        ip -n "$ns" addr add "fd00:f0::$i/128" dev lo
        i=$((i + 1))
    done
    ip -n "$A" link set ab up; ip -n "$A" link set ac up
    ip -n "$B" link set ba up; ip -n "$B" link set bc up
    ip -n "$C" link set ca up; ip -n "$C" link set cb up
    local n=1 ifs
    for ns in "$A" "$B" "$C"; do
        case $ns in
            "$A") ifs="ab ac" ;;
            "$B") ifs="ba bc" ;;
            *) ifs="ca cb" ;;
        esac
        local args=(-I "$WORK/$ns.pid" -S "$WORK/$ns.state" -L "$WORK/$ns.log")
        if [ "$kind" = re6stnet ]; then
            # re6st/plib.py router(): hello interval from the registry
            # (re6stnet's default --hello 15), its babel_default.
            args+=(-h 15 -H 15 -s
                -C 'redistribute local deny'
                -C "redistribute ip fd00:f0::$n/128 eq 128"
                -C 'default max-rtt-penalty 5000 rtt-max 500 rtt-decay 125'
                -C 'redistribute deny')
        else
            args+=(-C "redistribute ip fd00:f0::$n/128 eq 128"
                -C 'redistribute local deny')
        fi
        # shellcheck disable=SC2086
        ip netns exec "$ns" babeld "${args[@]}" $ifs >"$WORK/$ns.out" 2>&1 &
        PIDS+=($!)
        n=$((n + 1))
    done
    # Converged: A reaches B over the direct link (reply TTL 64).
    local t
    for t in $(seq 1 120); do
        ip netns exec "$A" ping -6 -c1 -W1 -I fd00:f0::1 fd00:f0::2 2>/dev/null | grep -q 'ttl=64' && break
        sleep 1
    done
    sleep 5
    local plog=$WORK/$tag.ping
    ip netns exec "$A" ping -6 -n -D -i 0.1 -W 1 -I fd00:f0::1 fd00:f0::2 >"$plog" 2>&1 &
    PIDS+=($!)
    sleep 3
    local cut_at
    cut_at=$(date +%s.%N)
    for ns in "$A:ab" "$B:ba"; do
        ip netns exec "${ns%%:*}" nft -f - <<NFT
table inet fo_cut {
  chain i { type filter hook input priority -10; iifname "${ns##*:}" drop; }
  chain o { type filter hook output priority -10; oifname "${ns##*:}" drop; }
  chain f { type filter hook forward priority -10; iifname "${ns##*:}" drop; oifname "${ns##*:}" drop; }
}
NFT
    done
    sleep "$HOLD"
    gap "$plog" "$cut_at"
    cleanup_run
}

re6st_runs() {
    local bin=${RE6ST:-}
    if [ -z "$bin" ]; then
        (cd "$ROOT" && cargo build --release --bin re6st >&2)
        bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/re6st
    fi
    local out=$WORK/re6st-demo.txt
    "$bin" demo --nodes 2 --measure --cuts "$RUNS" >"$out" 2>&1 || { cat "$out" >&2; return 1; }
    grep -E '^   cut [0-9]+ ' "$out" | sed -E 's/.*outage ([0-9.]+) s/\1/'
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

declare -A RESULT ALL
for row in "${ROWS[@]}"; do
    log "row $row: $RUNS runs"
    # Runs write to a file (not a command substitution) so that a signal
    # reaches the shell that owns the PIDs and namespaces.
    vals=$WORK/$row.vals
    : >"$vals"
    case $row in
        re6st) re6st_runs >"$vals" ;;
        babeld-re6stnet) for r in $(seq 1 "$RUNS"); do babeld_run re6stnet "$r" >>"$vals"; done ;;
        babeld-default) for r in $(seq 1 "$RUNS"); do babeld_run default "$r" >>"$vals"; done ;;
        *) echo "unknown row $row (re6st babeld-re6stnet babeld-default)" >&2; exit 2 ;;
    esac
    ALL[$row]=$(tr '\n' ' ' <"$vals")
    RESULT[$row]=$(median <"$vals")
    log "row $row: ${ALL[$row]}"
done

printf '\n| setup | outage (s), median | runs (s) |\n|---|---|---|\n'
for row in "${ROWS[@]}"; do
    printf '| %s | %s | %s|\n' "$row" "${RESULT[$row]}" "${ALL[$row]}"
done
