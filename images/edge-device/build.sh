#!/usr/bin/env bash
# Build the edge-device test image (a systemd host with sshd and podman) FROM the project's
# base image (images/build-base.sh). Prints the image reference on stdout, progress on stderr.
# The tag is the content hash of this directory plus the base image's tag, so the image is
# rebuilt only when its recipe or its base changes; a second call costs a `podman image exists`.
#
# Environment: FLEET_PODMAN (default podman).
set -euo pipefail

PODMAN="${FLEET_PODMAN:-podman}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

BASE="$("$HERE/../build-base.sh")"
HASH="$( { echo "$BASE"; cd "$HERE" && find . -type f ! -name '*.md' ! -name run.sh -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum; } | sha256sum | cut -c1-12)"
IMAGE="localhost/harmony-fleet-edge-device:bookworm-${HASH}"

if "$PODMAN" image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi

started=$SECONDS
echo "building $IMAGE from $BASE" >&2
"$PODMAN" build --quiet --pull=never --layers=false --build-arg "BASE=$BASE" \
    --label "io.nationtech.fleet.recipe-hash=$HASH" -t "$IMAGE" -f "$HERE/Containerfile" \
    "$HERE" >/dev/null
echo "built $IMAGE in $((SECONDS - started)) s" >&2
echo "$IMAGE"
