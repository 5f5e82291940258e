#!/usr/bin/env bash
# Make sure `promtool` and `prometheus` are on PATH: the alert-rule tests and the real-Prometheus
# dashboard test need them (tests/integration/observability). Debian's `prometheus` package ships
# both. Installs it when root; otherwise says why and exits non-zero (the tests then skip loudly).
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-prometheus: promtool/prometheus missing and not root: cannot apt-get install" \
        "prometheus; the Prometheus-binary tests will be skipped" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: promtool/prometheus missing and no apt-get on this machine;" \
        "the Prometheus-binary tests will be skipped" >&2
    exit 1
fi

# The package's post-install script would start a system service: we only want the binaries,
# and the tests start their own Prometheus with their own config.
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
