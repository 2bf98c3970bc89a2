#!/bin/sh
# Container entry point: check the data directories are writable, then run `lumbar-ai <command>`.
# A volume mounted with the wrong owner fails here with a clear message instead of deep inside a C-STORE.
set -eu
data="${LUMBAR_AI_DATA_DIR:-/var/lib/lumbar-ai}"
for dir in "$data/spool" "$data/results"; do
  mkdir -p "$dir" 2>/dev/null || true
  if [ ! -w "$dir" ]; then
    echo "lumbar-ai: $dir is not writable by uid $(id -u); chown the volume to 10001:10001" >&2
    exit 78
  fi
done
case "${1:-}" in
  ""|-*) set -- api "$@" ;;
  lumbar-ai) shift ;;
esac
exec lumbar-ai "$@"
