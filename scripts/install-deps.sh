#!/usr/bin/env bash
# Installs the system tools the lab tests, the demo and the benchmarks need on a
# fresh Debian machine with Rust. Idempotent: packages already present are skipped.
# Must run as root (the lab needs network namespaces anyway).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: must run as root (network namespaces and apt need it)" >&2
    exit 1
fi

# package -> a command (or file) that proves it is installed
declare -A probe=(
    [iproute2]=ip
    [nftables]=nft
    [iptables]=iptables
    [tcpdump]=tcpdump
    [tshark]=tshark
    [socat]=socat
    [ncat]=ncat
    [iperf3]=iperf3
    [dnsmasq-base]=dnsmasq
    [procps]=sysctl
    [curl]=curl
    [python3]=python3
    [ethtool]=ethtool
    [iputils-ping]=ping
    # preservetcp's tc BPF programs: clang -target bpf, llvm, libbpf headers
    [clang]=clang
    [llvm]=llvm-strip
    [libbpf-dev]=/usr/include/bpf/bpf_helpers.h
    [bpftool]=bpftool
)

missing=()
for pkg in "${!probe[@]}"; do
    p="${probe[$pkg]}"
    if [ "${p#/}" != "$p" ]; then
        [ -e "$p" ] || missing+=("$pkg")
    else
        command -v "$p" >/dev/null 2>&1 || missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cargo-fuzz is optional for the test suite (fuzz targets also run as proptests);
# `scripts/fuzz.sh` installs it on demand.
echo "install-deps: all tools present"
