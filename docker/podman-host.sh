#!/usr/bin/env bash
# Make this Debian machine build and run the images without a Docker engine or a registry
# (CI and the image test, tests/test_deploy_images.py): rootful podman with runc, and a
# Debian bookworm base image made with debootstrap from the machine's own apt mirror
# (Python 3.11, as on the host, so the host's wheels fit; libgomp1, the OpenMP runtime the
# llama-cpp-python wheel built on the host links). Idempotent (a base made with other
# packages is made again); needs root.
#   docker/podman-host.sh [IMAGE]     (default localhost/edge-ai-base:bookworm)
set -euo pipefail
image=${1:-localhost/edge-ai-base:bookworm}
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
# crun refuses this kernel's hybrid cgroup layout; raising rlimits is refused here
conf=/etc/containers/containers.conf
if ! grep -qs '^runtime = "runc"' "$conf"; then
    mkdir -p /etc/containers
    cat >>"$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
fi
packages=python3,python3-venv,ca-certificates,libgomp1
made=$(podman image inspect --format '{{index .Config.Labels "edge-ai.packages"}}' "$image" 2>/dev/null || true)
if [ "$made" != "$packages" ]; then
    mirror=$(sed -n 's/^URIs: *\(\S*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    mirror=${mirror:-$(sed -n 's/^deb \(\S*\) bookworm main.*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)}
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include="$packages" \
        bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change "LABEL edge-ai.packages=$packages" - "$image" >/dev/null
fi
echo "$image"
