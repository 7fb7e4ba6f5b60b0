#!/usr/bin/env bash
# Start (or remove) local edge devices for inventories/example: systemd hosts with sshd and
# nested podman, reached over SSH at 127.0.0.1:22201, :22202, ... and reaching this machine's
# loopback (the local stack, a local registry) at 10.0.2.2.
#
#   images/edge-device/run.sh up [N]     build the image if needed, start pi-01 .. pi-0N (default 2)
#   images/edge-device/run.sh down       remove them, their inner containers and volumes
#
# The devices accept the SSH key $FLEET_DEVICE_SSH_KEY (default ~/.ssh/id_ed25519; made if missing).
# The host's cgroup hierarchies are mounted one by one, never /sys/fs/cgroup itself (systemd in
# the device would remount the host's cgroup tmpfs read-only).
set -euo pipefail

PODMAN="${FLEET_PODMAN:-podman}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEY="${FLEET_DEVICE_SSH_KEY:-$HOME/.ssh/id_ed25519}"
LABEL="io.nationtech.fleet.test=example-device"

case "${1:-}" in
up)
    count="${2:-2}"
    image="$("$HERE/build.sh")"
    [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -f "$KEY"
    cgroups=()
    for c in cpu cpuacct cpuset memory devices freezer blkio pids systemd unified; do
        [ -e "/sys/fs/cgroup/$c" ] && cgroups+=(--volume "/sys/fs/cgroup/$c:/sys/fs/cgroup/$c:rw")
    done
    for i in $(seq 1 "$count"); do
        name="$(printf 'pi-%02d' "$i")"
        "$PODMAN" run -d --name "$name" --hostname "$name" --label "$LABEL" \
            --systemd=always --privileged --cgroupns=host --stop-timeout 10 \
            --tmpfs /sys/fs/cgroup:rw,mode=755 "${cgroups[@]}" \
            --volume "$name-containers:/var/lib/containers" \
            --volume "$KEY.pub:/etc/ssh/authorized_keys/ansible:ro" \
            --network slirp4netns:allow_host_loopback=true \
            -p "127.0.0.1:$((22200 + i)):22" "$image" /sbin/init >/dev/null
        echo "$name: ssh -i $KEY -p $((22200 + i)) ansible@127.0.0.1"
    done
    ;;
down)
    for name in $("$PODMAN" ps -a --filter "label=$LABEL" --format '{{.Names}}'); do
        "$PODMAN" exec "$name" podman rm --all --force --time 2 >/dev/null 2>&1 || true
        "$PODMAN" rm --force --time 10 "$name" >/dev/null
        "$PODMAN" volume rm --force "$name-containers" >/dev/null 2>&1 || true
        echo "removed $name"
    done
    ;;
*)
    echo "usage: $0 up [N] | down" >&2
    exit 2
    ;;
esac
