#!/usr/bin/env bash
# Installs the system packages vprov's build and test suite need on a fresh Debian
# machine that already has the Rust toolchain. Idempotent: installs only what is
# missing, and does nothing when everything is present.
set -euo pipefail

need=()
# The bundled SQLite (rusqlite's "bundled" feature) is C, compiled by cc.
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# The device connector links the system OpenSSL (openssl-sys finds it via pkg-config).
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
# The kill program (procps) sends SIGTERM to test servers.
{ [ -x /usr/bin/kill ] || [ -x /bin/kill ]; } || need+=(procps)
# The key-sheet tests read the exported PDF back with poppler's pdftotext.
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)

if ((${#need[@]} == 0)); then
  exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "installing: ${need[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
