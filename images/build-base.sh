#!/usr/bin/env bash
# The base every Harmony Fleet image builds on (the daemon image and the edge-device test image):
# Debian 12 (bookworm) minbase made with debootstrap from the host's own Debian mirror, with
# python3 and ca-certificates. No container registry is involved.
#
# Prints the image reference on stdout (progress goes to stderr). The tag carries the content
# hash of this script and the mirror it was built from, so the image is rebuilt only when the
# recipe changes: a second call costs a `podman image exists`.
#
# Environment: FLEET_BASE_MIRROR (default: the first deb.debian.org-style URI of the host's apt
# sources, so the image's apt sees the same mirror as the host), FLEET_PODMAN (default podman).
set -euo pipefail

PODMAN="${FLEET_PODMAN:-podman}"
SUITE=bookworm
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

host_mirror() {
    # deb822 sources (Debian 12 default) first, then one-line sources
    local uri
    uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1 || true)"
    if [ -z "$uri" ]; then
        uri="$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{print $2}' | grep -v security | head -n1 || true)"
    fi
    [ -n "$uri" ] || { echo "no Debian mirror found in the host's apt sources" >&2; exit 1; }
    echo "$uri"
}

MIRROR="${FLEET_BASE_MIRROR:-$(host_mirror)}"
HASH="$( { cat "${BASH_SOURCE[0]}"; echo "$MIRROR"; } | sha256sum | cut -c1-12)"
IMAGE="localhost/harmony-fleet-base:${SUITE}-${HASH}"

if "$PODMAN" image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
    echo "debootstrap needs root to build $IMAGE" >&2
    exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fleet-base.XXXXXX")"
cleanup() {
    # a failed debootstrap can leave /proc or /dev mounted inside the rootfs
    for m in proc sys dev/pts dev; do umount -l "$WORK/rootfs/$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

started=$SECONDS
echo "building $IMAGE (debootstrap $SUITE from $MIRROR)" >&2
debootstrap --variant=minbase --include=python3,ca-certificates \
    "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 20 "$WORK/debootstrap.log" >&2
    echo "debootstrap failed (log above)" >&2
    exit 1
}

ROOTFS="$WORK/rootfs"
# apt inside the image uses the same mirror, with the security suite when the host has one
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
SOURCES
# small images: no docs, man pages or apt lists left behind
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-fleet-nodoc" <<'NODOC'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
NODOC
cat >"$ROOTFS/etc/apt/apt.conf.d/01-fleet-norecommends" <<'APTCONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APTCONF
rm -rf "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
    "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/*.log
: >"$ROOTFS/etc/machine-id"

tar -C "$ROOTFS" --numeric-owner -cf "$WORK/rootfs.tar" .
"$PODMAN" import \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=harmony-fleet-base" \
    --change "LABEL org.opencontainers.image.description=Debian $SUITE minbase with python3" \
    --change "LABEL io.nationtech.fleet.recipe-hash=$HASH" \
    "$WORK/rootfs.tar" "$IMAGE" >/dev/null
echo "built $IMAGE in $((SECONDS - started)) s" >&2
echo "$IMAGE"
