#!/usr/bin/env bash
# Install Debian's `prometheus` package for the dashboard/alert test (e2e/python/test_dashboards.py)
# and print the server binary's path. Idempotent. The packaged service is never started
# (policy-rc.d forbids it during the install, and it is disabled if the install enabled it):
# the test starts its own Prometheus on a free loopback port.
# Usage: PROMETHEUS=$(scripts/setup-prometheus.sh)      (needs root for apt-get)
set -euo pipefail
bin=/usr/bin/prometheus
if [ ! -x "$bin" ]; then
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    # Exit code 101 = "action forbidden": invoke-rc.d then leaves the packaged service stopped.
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created_policy=1
  fi
  trap 'if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
  echo "setup-prometheus: installing Debian's prometheus" >&2
  install_prometheus() { apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; }
  install_prometheus || { apt-get update -q >/dev/null && install_prometheus; }
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
"$bin" --version 2>&1 | sed -n 1p >&2
echo "$bin"
