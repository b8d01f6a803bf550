#!/usr/bin/env bash
# Installs what building and testing replayguard needs on a fresh Debian
# machine. Idempotent: installs only what is missing. Run as root or with sudo.
set -euo pipefail

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# build-essential: cc/c++ for RocksDB and librdkafka; libclang-dev: RocksDB's
# bindgen; libssl-dev + pkg-config: TLS to Kafka; zlib1g-dev: compression.
for p in build-essential pkg-config libclang-dev libssl-dev zlib1g-dev ca-certificates curl; do
  have_pkg "$p" || need_apt+=("$p")
done
for p in ${EXTRA_APT_PACKAGES:-}; do
  have_pkg "$p" || need_apt+=("$p")
done
# Apache Kafka (scripts/kafka.sh) needs a JDK 17 and Maven; most machines of
# this project have them already
if [ "${SETUP_KAFKA:-0}" = 1 ]; then
  command -v javac >/dev/null 2>&1 || need_apt+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
