#!/usr/bin/env bash
# Debian packages the test suite's real-node tier and the control-plane build need beyond Python
# and Go: the Docker engine (builds featx's images), debootstrap (a base image without a registry),
# CNI plugins (the node's pod network), libseccomp-dev + pkg-config (runc), iptables (Services),
# chromium (the report's browser test), tmux (the terminal-progress test).
# A no-op when all are installed; otherwise needs root and apt. `make install` runs it first.
set -euo pipefail
PACKAGES=(docker.io debootstrap containernetworking-plugins libseccomp-dev pkg-config iptables gcc libc6-dev chromium tmux)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed" || missing+=("${p}")
done
((${#missing[@]} == 0)) && exit 0
[[ "$(id -u)" == 0 ]] || { echo "install-system-deps: missing ${missing[*]}: sudo apt-get install ${missing[*]}" >&2; exit 1; }
echo "install-system-deps: apt-get install ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
