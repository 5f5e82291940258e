#!/usr/bin/env bash
# Build a pinned helm from the Go module proxy into ~/.cache/ledgerflow/helm and print its path.
#
# Why build it: this machine reaches package registries only (no release downloads), and the Go
# module proxy carries helm's source. The first build takes a few minutes; afterwards this is a
# no-op that only checks the binary's version.
#
# Exit codes: 0 helm ready (path on stdout), 3 no Go toolchain (callers skip loudly), other: failure.
set -euo pipefail

HELM_VERSION="${LEDGERFLOW_HELM_VERSION:-v3.22.0}"
CACHE_DIR="${LEDGERFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ledgerflow}/helm/${HELM_VERSION}"
HELM_BIN="${CACHE_DIR}/bin/helm"

if [[ -x "${HELM_BIN}" ]] && [[ "$("${HELM_BIN}" version --template '{{.Version}}' 2>/dev/null)" == "${HELM_VERSION}" ]]; then
  echo "${HELM_BIN}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  {
    echo "######################################################################"
    echo "# ensure-helm: no Go toolchain on PATH: cannot build helm ${HELM_VERSION}."
    echo "# Install Go 1.26+ (https://go.dev/doc/install) to run the chart tests."
    echo "######################################################################"
  } >&2
  exit 3
fi

mkdir -p "${CACHE_DIR}/bin"
echo "ensure-helm: building helm ${HELM_VERSION} from the Go module proxy (first run: minutes)" >&2
started=${SECONDS}
# Set the ldflags the way helm's own Makefile does: the version, and the Kubernetes version
# (client-go v0.N -> 1.N) that `helm template` and `helm lint` assume without a cluster; without
# them helm reports "v3.x" and renders for Kubernetes 1.20.
gomod="$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
client_go="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "${gomod}")"
if [[ -z "${client_go}" ]]; then
  echo "ensure-helm: cannot read k8s.io/client-go's version from ${gomod}" >&2
  exit 1
fi
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1 -X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${client_go}"
done
# -trimpath and no VCS stamping: the build does not depend on where it ran.
GOBIN="${CACHE_DIR}/bin" GOFLAGS="-buildvcs=false" CGO_ENABLED=0 \
  go install -trimpath -ldflags "${ldflags}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
echo "ensure-helm: built in $((SECONDS - started)) s: ${HELM_BIN}" >&2
"${HELM_BIN}" version --short >&2
echo "${HELM_BIN}"
