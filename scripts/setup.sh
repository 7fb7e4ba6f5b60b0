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

# --- system packages (podman with runc: crun fails on cgroup v1 hosts like these) ---------
# docker-registry + apache2-utils (htpasswd): a real registry with basic auth on loopback for the
# private-registry tests (tests/integration/registry.py); debootstrap: images/build-base.sh;
# chromium: the dashboard's browser tests drive Debian's build through Playwright (a browser
# download is never needed)
APT_PACKAGES=(podman runc busybox-static uidmap slirp4netns python3-venv git make openssh-client
              docker-registry apache2-utils debootstrap chromium)
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
    # Debian enables a system-wide registry on :5000 on install; the tests start their own on
    # loopback, so a registry this script brought in is not left serving
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
    fi
fi

# --- podman: runc and ulimits this kind of host accepts ------------------------------------
CONTAINERS_CONF=/etc/containers/containers.conf
WANT_CONF="$ROOT/scripts/containers.conf"
if ! cmp -s "$WANT_CONF" "$CONTAINERS_CONF" 2>/dev/null; then
    log "installing $CONTAINERS_CONF"
    $SUDO install -D -m 0644 "$WANT_CONF" "$CONTAINERS_CONF"
fi

# --- podman --userns=auto (the agent's default policy) needs subordinate ids --------------
# Rootful podman carves each container's user namespace from the ranges of user "containers".
# The upper half of the 32-bit id space stays clear of login users (useradd hands out ranges
# from 100000 up); harmony_fleet.agent.policy names the same range in its error message.
SUBID_LINE="containers:2147483647:2147483648"
for subid_file in /etc/subuid /etc/subgid; do
    if ! grep -qs '^containers:' "$subid_file"; then
        log "adding $SUBID_LINE to $subid_file"
        echo "$SUBID_LINE" | $SUDO tee -a "$subid_file" >/dev/null
    fi
done

# --- Python virtualenv ----------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
STAMP=.venv/.harmony-setup
WANT_STAMP="$(cat pyproject.toml tests/harness/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT_STAMP" ]; then
    log "pip install the package, its dev group and the test harness (first run takes a few minutes: ansible is large)"
    .venv/bin/python -m pip install -q --upgrade pip
    # the product with every extra, the tools of the dev dependency group, and the test
    # harness (an unpublished distribution of its own, tests/harness)
    # --no-compile: pip would byte-compile all ~24,000 .py files of the venv (ansible's bundled
    # collections are most of them), about 90 s of CPU (measured, 2,000 files in 7.3 s); Python
    # compiles the few hundred modules a run imports when it first imports them, once
    .venv/bin/python -m pip install -q --no-compile -e '.[localstack,operator,dashboard]' --group dev \
        -e tests/harness
    echo "$WANT_STAMP" > "$STAMP"
fi
# Byte-compile what runs import, once per install. pip's --no-compile above skips it, and where
# PYTHONDONTWRITEBYTECODE is set (as on the CI hosts) Python never writes a .pyc itself: every
# process compiled every module it imported, every time. Measured: importing the Kubernetes
# client (each kubernetes.core task does) 1.10 s -> 0.34 s CPU, ansible-playbook's start
# 1.06 s -> 0.40 s; this costs about 35 s of CPU once. ansible's bundled collections (most of
# the files) are left out: their modules travel to the target inside AnsiballZ zips anyway.
COMPILED=.venv/.harmony-compiled
if [ "$(cat "$COMPILED" 2>/dev/null || true)" != "$WANT_STAMP" ]; then
    log "byte-compiling the venv's packages and this checkout's Python code"
    .venv/bin/python -m compileall -q -j0 -x 'ansible_collections' .venv/lib/python3*/site-packages \
        daemons tests/harness >/dev/null
    echo "$WANT_STAMP" > "$COMPILED"
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
