#!/usr/bin/env bash
# Machine set-up for the test suite on a fresh Debian machine (root): a Docker Engine, the
# project's images built offline (the base image from Debian with debootstrap, then envs/cpu
# from its locked wheels), Chromium for the audit report's screenshot test, and qemu-user for
# the emulated-CPU tests (qemu-x86_64 -cpu MODEL: docs/portability.md).
#   bash envs/setup.sh            # engine + images
#   bash envs/setup.sh --engine   # engine only
# Idempotent: an installed engine, a running daemon and existing images are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != "0" ]; then
  echo "setup: needs root (apt-get, dockerd, debootstrap); run it as root or with sudo" >&2
  exit 1
fi
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
    || ! command -v chromium >/dev/null || ! command -v qemu-x86_64 >/dev/null; then
  echo "setup: installing docker.io, debootstrap, chromium and qemu-user"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap chromium qemu-user >/dev/null
fi
if ! docker version >/dev/null 2>&1; then
  # a daemon killed without cleanup (the end of a session) leaves pid files that stop the next
  for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
      echo "setup: removing stale $pidfile"
      rm -f "$pidfile"
    fi
  done
  echo "setup: starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  dockerd_pid=$!
  for i in $(seq 1 60); do
    if docker version >/dev/null 2>&1; then break; fi
    kill -0 "$dockerd_pid" 2>/dev/null || break   # it exited: say why at once
    sleep 1
  done
  if ! docker version >/dev/null 2>&1; then
    echo "setup: dockerd did not answer within 60 s; its log:" >&2
    tail -30 /var/log/dockerd.log >&2
    exit 1
  fi
fi
echo "setup: engine $(docker version --format '{{.Server.Version}}') is up"
[ "${1:-}" = "--engine" ] && exit 0

python3 -m repro.cli env build envs/cpu
