#!/usr/bin/env bash
# The README's main-job command: install what is needed, start the local stack (nats-server
# with JetStream, the fleet buckets, two agents driving the local podman), roll a small
# workload (an init container and a service, on a locally built busybox image) onto every
# device with Ansible, show it running, read its logs, ping every device, then tear it all
# down. KEEP=1 leaves the stack (and the workload) running for you to poke at.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source .venv/bin/activate
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"

DEVICES="${DEVICES:-2}"
KEEP="${KEEP:-0}"

if fleet stack status >/dev/null 2>&1; then
    echo "==> a local stack is already running (fleet stack status); stopping it first" >&2
    fleet stack down
fi

cleanup() {
    if [ "$KEEP" != "1" ]; then
        echo "==> fleet stack down" >&2
        fleet stack down || true
    fi
}
trap cleanup EXIT

echo "==> fleet demo-image (busybox-static imported into podman: no registry needed)" >&2
fleet demo-image

echo "==> fleet stack up --devices $DEVICES --runtime --keep" >&2
fleet stack up --devices "$DEVICES" --runtime --keep

echo "==> ansible-playbook playbooks/demo.yml (roll out, wait for Running, ping)" >&2
ansible-playbook -i inventories/local playbooks/demo.yml

echo "==> what runs (podman ps, containers managed by the agents)" >&2
podman ps --filter label=io.nationtech.fleet.managed=true \
    --format 'table {{.Names}}\t{{.Status}}\t{{.Image}}'

echo "==> fleet logs local-0 demo_hello web" >&2
fleet logs local-0 demo_hello web

echo "==> ansible -i inventories/local all -m harmony.fleet.fleet_ping" >&2
ansible -i inventories/local all -m harmony.fleet.fleet_ping

echo "==> fleet ping (round trips)" >&2
mapfile -t ids < <(ansible-inventory -i inventories/local --list \
    | python3 -c 'import json,sys; print("\n".join(sorted(json.load(sys.stdin)["fleet"]["hosts"])))')
fleet ping --count 100 "${ids[@]}"

if [ "$KEEP" = "1" ]; then
    echo "==> stack left running: 'fleet stack status', 'fleet stack down'" >&2
fi
