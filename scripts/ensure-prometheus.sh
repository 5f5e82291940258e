#!/usr/bin/env bash
# Make sure `promtool` and `prometheus` are on PATH: the alert-rule tests and the real-Prometheus
# dashboard test need them (tests/integration/observability). Debian's `prometheus` package ships
# both. Installs it when root; otherwise says why and exits non-zero, and those tests skip loudly.
#
# Exit codes: 0 both binaries ready, 1 missing and cannot be installed here.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi

cannot() {
  {
    echo "######################################################################"
    echo "# ensure-prometheus: promtool/prometheus missing: $1."
    echo "# Install Debian's 'prometheus' package to run the alert-rule and"
    echo "# dashboard tests; they are skipped meanwhile."
    echo "######################################################################"
  } >&2
  exit 1
}

[[ "$(id -u)" -eq 0 ]] || cannot "not root, so apt-get install is not possible"
command -v apt-get >/dev/null 2>&1 || cannot "no apt-get on this machine"

echo "ensure-prometheus: installing Debian's prometheus package" >&2
# Only the binaries are used: the tests start their own Prometheus with their own config.
# (Without an init system the package's service is not started.)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
