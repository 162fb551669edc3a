# lib.sh - shared pieces of the throughput harness (sourced by run.sh).
#
# Topology of every row (fresh namespaces per row, unique names):
#
#   netns $NS_A                        netns $NS_B
#   veth "tpa" 198.18.0.1/24  <----->  veth "tpb" 198.18.0.2/24    (underlay)
#              fd00:198:18::1/64               fd00:198:18::2/64
#   tunnel device (overlay)   .......  tunnel device (overlay)
#
# 198.18.0.0/15 is the RFC 2544 benchmarking range and fd00::/8 is unique
# local; nothing here touches the host's own interfaces. iperf3 runs as the
# client in A and the server in B, so data flows A -> B through the tunnel.
# Every background process is recorded and killed by its PID; namespaces
# are deleted when a row ends, even on failure.

UL_A=198.18.0.1
UL_B=198.18.0.2
UL6_A=fd00:198:18::1
UL6_B=fd00:198:18::2

RUNS=${RUNS:-3}              # repetitions of each iperf3 test (median kept)
DURATION=${DURATION:-8}      # seconds per iperf3 run
UDP_LEN=${UDP_LEN:-1400}     # UDP datagram payload (bytes)
PING_COUNT=${PING_COUNT:-20}
TESTS=${TESTS:-tcp1 tcp4 udp ping} # which tests measure runs (any subset)
IPERF_PORT=5201
QUIET_PCT=${QUIET_PCT:-25}   # wait until the machine is below this busy %...
QUIET_WAIT=${QUIET_WAIT:-60} # ...for at most this many seconds, then go on
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Per-row state, reset by row_begin.
STARTED_PIDS=()   # every background process of the row
TUNNEL_PIDS=()    # the tunnel processes whose CPU time is accounted
CLEANUP_FILES=()
TARGET=           # overlay address of B that iperf3/ping aim at

row_begin() {
    STARTED_PIDS=()
    TUNNEL_PIDS=()
    CLEANUP_FILES=()
    TARGET=
    ROW_WORK=$(mktemp -d "$WORK/row.XXXXXX")
    NS_A=tp-a-$$-$ROW_SEQ
    NS_B=tp-b-$$-$ROW_SEQ
    ROW_SEQ=$((ROW_SEQ + 1))
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    ip link add tpa netns "$NS_A" type veth peer name tpb netns "$NS_B"
    ip -n "$NS_A" addr add "$UL_A/24" dev tpa
    ip -n "$NS_B" addr add "$UL_B/24" dev tpb
    ip -n "$NS_A" addr add "$UL6_A/64" dev tpa nodad
    ip -n "$NS_B" addr add "$UL6_B/64" dev tpb nodad
    local ns
    for ns in "$NS_A" "$NS_B"; do
        ip -n "$ns" link set lo up
    done
    ip -n "$NS_A" link set tpa up
    ip -n "$NS_B" link set tpb up
}

row_end() {
    set +e
    local p
    for p in "${STARTED_PIDS[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${STARTED_PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    [ -n "${NS_A:-}" ] && ip netns del "$NS_A" 2>/dev/null
    [ -n "${NS_B:-}" ] && ip netns del "$NS_B" 2>/dev/null
    for p in "${CLEANUP_FILES[@]}"; do
        rm -f "$p"
    done
    STARTED_PIDS=()
    set -e
}

# bg_in_ns NS LOGFILE cmd args...: start cmd inside NS in the background and
# record its PID in LAST_PID (`ip netns exec` execs, so $! is cmd itself).
bg_in_ns() {
    local ns=$1 logf=$2
    shift 2
    ip netns exec "$ns" "$@" >"$logf" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

# wait_ping TARGET: until TARGET answers from A (about 30 s at most).
wait_ping() {
    local i
    for i in $(seq 1 60); do
        ip netns exec "$NS_A" ping -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "$1 never answered ping"
    return 1
}

# utime + stime in clock ticks, summed over whole processes (all threads).
pid_ticks() {
    local p t=0 v
    for p in "$@"; do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    echo "$t"
}

# "busy total" jiffies over all CPUs (busy includes steal).
sys_ticks() {
    awk '/^cpu / { b = $2+$3+$4+$7+$8+$9; print b, b+$5+$6 }' /proc/stat
}

busy_pct_over() {
    local a b
    a=$(sys_ticks)
    sleep "$1"
    b=$(sys_ticks)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; printf "%.0f", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }'
}

# The machine is shared: wait (bounded) for it to be quiet before each run,
# and record how busy it was so a reader can judge the run.
wait_quiet() {
    local start=$SECONDS
    while :; do
        BUSY_BEFORE=$(busy_pct_over 1)
        [ "$BUSY_BEFORE" -lt "$QUIET_PCT" ] && return 0
        [ $((SECONDS - start)) -ge "$QUIET_WAIT" ] && return 0
    done
}

# iperf_once KIND: one iperf3 run A -> B; prints one TSV line
#   mbps  loss_pct  retransmits  tunnel_cpu_s  gbit_received  sys_busy_pct
iperf_once() {
    local kind=$1 json=$ROW_WORK/iperf.json
    local args=(-c "$TARGET" -p "$IPERF_PORT" -t "$DURATION" -J --connect-timeout 5000)
    case $kind in
        tcp1) ;;
        tcp4) args+=(-P 4) ;;
        udp) args+=(-u -b 0 -l "$UDP_LEN") ;;
    esac
    local t0 t1 s0 s1
    t0=$(pid_ticks "${TUNNEL_PIDS[@]}")
    s0=$(sys_ticks)
    timeout $((DURATION + 30)) ip netns exec "$NS_A" iperf3 "${args[@]}" >"$json" 2>"$ROW_WORK/iperf.err" || true
    jq -e .end.sum_received >/dev/null 2>&1 <"$json" || cp "$json" "$RESULTS/failed-$ROW_NAME-$kind-$(date +%H%M%S).json"
    s1=$(sys_ticks)
    t1=$(pid_ticks "${TUNNEL_PIDS[@]}")
    python3 - "$json" "$kind" "$t0" "$t1" "$s0" "$s1" "$CLK_TCK" <<'EOF'
import json, sys
path, kind = sys.argv[1], sys.argv[2]
t0, t1 = int(sys.argv[3]), int(sys.argv[4])
s0b, s0t = map(int, sys.argv[5].split()); s1b, s1t = map(int, sys.argv[6].split())
clk = int(sys.argv[7])
mbps, loss, retr, gbit = 0.0, 100.0, 0, 0.0
try:
    end = json.load(open(path))["end"]
    rcv = end["sum_received"]
    mbps = rcv["bits_per_second"] / 1e6
    gbit = rcv["bits_per_second"] * rcv["seconds"] / 1e9
    if kind == "udp":
        # sent vs. received: iperf3's own lost_percent counts sequence gaps
        # only, and says 0 % when nothing arrived at all
        sent = end["sum_sent"].get("packets", 0)
        got = rcv.get("packets", 0) - rcv.get("lost_packets", 0)
        loss = 100.0 * (1 - got / sent) if sent else 100.0
    else:
        loss = 0.0
        retr = end.get("sum_sent", {}).get("retransmits", 0)
except Exception as e:
    sys.stderr.write("iperf3 run failed: %r\n" % (e,))
cpu = (t1 - t0) / clk
busy = 100.0 * (s1b - s0b) / max(1, s1t - s0t)
print("%.1f\t%.2f\t%d\t%.2f\t%.3f\t%.0f" % (mbps, loss, retr, cpu, gbit, busy))
EOF
}

# ping_once: average RTT in ms from A to TARGET.
ping_once() {
    ip netns exec "$NS_A" ping -q -c "$PING_COUNT" -i 0.2 -W 2 "$TARGET" 2>/dev/null \
        | awk -F'/' '/^rtt/ { print $5 }'
}

# measure ROW: the whole suite against TARGET; appends to $RUNS_TSV.
measure() {
    local row=$1 kind i line
    bg_in_ns "$NS_B" "$ROW_WORK/iperf3-server.log" iperf3 -s -p "$IPERF_PORT"
    sleep 0.5
    for kind in tcp1 tcp4 udp; do
        case " $TESTS " in *" $kind "*) ;; *) continue ;; esac
        for i in $(seq 1 "$RUNS"); do
            wait_quiet
            line=$(iperf_once "$kind")
            log "$row $kind #$i: $(printf '%s' "$line" | tr '\t' ' ') (busy before ${BUSY_BEFORE}%)"
            printf '%s\t%s\t%s\t%s\t%s\n' "$row" "$kind" "$i" "$line" "$BUSY_BEFORE" >>"$RUNS_TSV"
            sleep 1
        done
    done
    case " $TESTS " in *" ping "*) ;; *) return 0 ;; esac
    for i in $(seq 1 "$RUNS"); do
        line=$(ping_once)
        log "$row ping #$i: ${line:-none} ms"
        printf '%s\tping\t%s\t%s\t\t\t\t\t\t\n' "$row" "$i" "${line:-nan}" >>"$RUNS_TSV"
    done
}
