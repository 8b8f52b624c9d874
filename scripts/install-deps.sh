#!/usr/bin/env bash
# Installs the system packages vprov's build and test suite need on a fresh Debian
# machine that already has the Rust toolchain. Idempotent: installs only what is
# missing, and does nothing when everything is present.
#
#   scripts/install-deps.sh          what the build and the whole test suite need
#   scripts/install-deps.sh --build  only what building vprov needs (scripts/serve.sh)
set -euo pipefail

build_only=false
[ "${1:-}" = "--build" ] && build_only=true

need=()
# The bundled SQLite (rusqlite's "bundled" feature) is C, compiled by cc.
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# The device connector links the system OpenSSL (openssl-sys finds it via pkg-config).
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
# vprov's allocator (tikv-jemallocator) builds jemalloc from C source with configure and make.
command -v make >/dev/null 2>&1 || need+=(make)
if ! $build_only; then
# The kill program (procps) sends SIGTERM to test servers.
{ [ -x /usr/bin/kill ] || [ -x /bin/kill ]; } || need+=(procps)
# The key-sheet tests read the exported PDF back with poppler's pdftotext.
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)

# The agent deployment tests start a real OpenSSH server (sshd) on loopback, and make
# its keys with ssh-keygen.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)

# The e-mail alert tests deliver to aiosmtpd (Python), a real SMTP server.
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)

# The console's end-to-end test drives Debian's Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)

# The store's PostgreSQL tests run a throwaway cluster (scripts/pg-cluster.sh) with
# Debian's server binaries, which live in /usr/lib/postgresql/<major>/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# ... and makes its TLS certificate with the openssl command.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
if ((${#need[@]} > 0)); then
  echo "installing: ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
$build_only && exit 0
# sshd refuses to start without its privilege separation directory, which the
# service's start-up (not the package) creates; /run is emptied at every boot.
[ -d /run/sshd ] || "${sudo[@]}" mkdir -p -m 0755 /run/sshd
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "installing: aiosmtpd (PyPI)" >&2
  python3 -m pip install --quiet --user aiosmtpd 2>/dev/null ||
    python3 -m pip install --quiet aiosmtpd 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages aiosmtpd
fi
