#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use (dcmtk, dicom3tools, redis-server) when missing.
# Needs root or sudo; without either it says what to install and carries on (tests that need a missing
# tool then skip with that tool's name).
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else
  echo "system packages missing and no root: apt-get install ${missing[*]}" >&2; exit 0; fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
