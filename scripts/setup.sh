#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: system packages, podman configuration,
# the repository's .venv with every Python dependency, and the collection path Ansible uses.
# Safe to run again: every step checks before it changes anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '==> %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# --- system packages (see TEST-INFRA.md: crun does not work here, runc does) -------------
APT_PACKAGES=(podman runc busybox-static uidmap slirp4netns python3-venv git make openssh-client)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# --- podman: runc and ulimits this kind of host accepts ------------------------------------
CONTAINERS_CONF=/etc/containers/containers.conf
WANT_CONF="$ROOT/scripts/containers.conf"
if ! cmp -s "$WANT_CONF" "$CONTAINERS_CONF" 2>/dev/null; then
    log "installing $CONTAINERS_CONF"
    $SUDO install -D -m 0644 "$WANT_CONF" "$CONTAINERS_CONF"
fi

# --- Python virtualenv ----------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
STAMP=.venv/.harmony-setup
WANT_STAMP="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT_STAMP" ]; then
    log "pip install -e '.[dev]' (first run takes a few minutes: ansible is large)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$WANT_STAMP" > "$STAMP"
fi

# --- the collection resolves from this checkout (ansible.cfg points at .collections) --------
mkdir -p .collections/ansible_collections/harmony
if [ "$(readlink .collections/ansible_collections/harmony/fleet || true)" != "../../.." ]; then
    rm -rf .collections/ansible_collections/harmony/fleet
    ln -s ../../.. .collections/ansible_collections/harmony/fleet
fi

# --- ansible-test sanity downloads a pip bootstrap script; give it a local stand-in ---------
GET_PIP="$HOME/.ansible/test/cache/get_pip_24_2.py"
if [ ! -f "$GET_PIP" ]; then
    mkdir -p "$(dirname "$GET_PIP")"
    cat > "$GET_PIP" <<'PYEOF'
# Local stand-in for the pip bootstrap ansible-test downloads (no internet on these hosts).
import ensurepip
ensurepip.bootstrap(upgrade=True)
PYEOF
fi

log "setup complete: activate with 'source .venv/bin/activate'"
