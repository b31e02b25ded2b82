#!/usr/bin/env bash
# `make demo`: the README's command-line example, end to end, against a
# throwaway registry on 127.0.0.1 (plain http, no auth), with `python3 dxf.py`.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# The registry launcher is test_dxf.py's (the one the tests use).
mkdir "$tmp/registry"
python3 "$top/test_dxf.py" --serve "$tmp/registry" >"$tmp/host" &
pid=$!
until [ -s "$tmp/host" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "demo: the registry did not start" >&2; exit 1; }
    sleep 0.02
done
port=$(cut -d: -f2 "$tmp/host")
echo "registry: http://127.0.0.1:$port (storage in $tmp)"

export DXF_HOST=127.0.0.1:$port DXF_INSECURE=1
dxf() { python3 "$top/dxf.py" "$@"; }
cd "$tmp"
head -c 300000 /dev/urandom >logger.dat
want=sha256:$(sha256sum logger.dat | cut -d' ' -f1)

say() { printf '\n$ %s\n' "$*"; }

say dxf push-blob fred/datalogger logger.dat @may15-readings
got=$(dxf push-blob fred/datalogger logger.dat @may15-readings)
echo "$got"
[ "$got" = "$want" ] || { echo "demo: push-blob printed $got, expected $want" >&2; exit 1; }

say dxf pull-blob fred/datalogger @may15-readings '> pulled.dat'
dxf pull-blob fred/datalogger @may15-readings >pulled.dat
cmp logger.dat pulled.dat
echo "(pulled $(wc -c <pulled.dat) bytes, identical to logger.dat)"

echo
echo "which is the same as:"
say 'dxf set-alias fred/datalogger may15-readings $(dxf push-blob fred/datalogger logger.dat)'
dxf set-alias fred/datalogger may15-readings "$(dxf push-blob fred/datalogger logger.dat)"

say 'dxf pull-blob fred/datalogger $(dxf get-alias fred/datalogger may15-readings) > pulled2.dat'
dxf pull-blob fred/datalogger $(dxf get-alias fred/datalogger may15-readings) >pulled2.dat
cmp logger.dat pulled2.dat
echo "(pulled $(wc -c <pulled2.dat) bytes, identical to logger.dat)"

say dxf get-alias fred/datalogger may15-readings
got=$(dxf get-alias fred/datalogger may15-readings)
echo "$got"
[ "$got" = "$want" ] || { echo "demo: get-alias printed $got, expected $want" >&2; exit 1; }

echo
echo "demo: ok"
