#!/usr/bin/env bash
# install.sh - install what the throughput harness needs (Debian, root):
# iperf3, OpenVPN 2.6, wireguard-tools (`wg`, configures boringtun), sysstat, jq,
# iproute2/ping/openssl/python3, and boringtun-cli from crates.io.
# Idempotent: skips what is already there.
set -euo pipefail
pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
need iperf3 iperf3
need openvpn openvpn
need openssl openssl
need wg wireguard-tools
need mpstat sysstat
need ip iproute2
need ping iputils-ping
need python3 python3
need jq jq
if ((${#pkgs[@]})); then
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    # --no-install-recommends: wireguard-tools would otherwise pull a kernel
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
        --no-install-recommends "${pkgs[@]}"
fi
if ! command -v boringtun-cli >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/boringtun-cli" ]; then
    # its own target directory: never mixes with the project's build cache
    CARGO_TARGET_DIR=${BT_TARGET_DIR:-$(mktemp -d -t boringtun-build.XXXXXX)} \
        cargo install boringtun-cli --locked
fi
