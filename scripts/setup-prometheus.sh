#!/usr/bin/env bash
# Install Debian's `prometheus` package for the dashboard/alert test (e2e/python/test_dashboards.py)
# and print the server binary's path. Idempotent. The package's own service is never started
# (policy-rc.d forbids it during the install, and it is stopped/disabled if the install ran it
# anyway): the test starts its own Prometheus on a free loopback port.
set -euo pipefail
bin=/usr/bin/prometheus
if [ ! -x "$bin" ]; then
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  # Exit code 101 = "action forbidden": keeps invoke-rc.d from starting the packaged service.
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt-get update -q >/dev/null
  fi
  apt-get install -y -q --no-install-recommends prometheus >&2
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
"$bin" --version 2>&1 | head -1 >&2
echo "$bin"
