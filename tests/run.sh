#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
#   bash tests/run.sh [pytest args...]
# Real peers come from Debian (gearmand: gearman-job-server; gearman, gearadmin: gearman-tools;
# chromium for the browser test),
# installed with apt-get when missing and running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gearmand >/dev/null 2>&1 || [ -x /usr/sbin/gearmand ] || need_apt+=(gearman-job-server)
command -v gearman >/dev/null 2>&1 || need_apt+=(gearman-tools)
# tests/test_browser.py: Debian's Chromium, driven by playwright (no browser download)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need_apt+=(chromium)
# tests/test_netns.py: network namespaces joined by veth and a bridge
{ command -v ip && command -v bridge; } >/dev/null 2>&1 || need_apt+=(iproute2)
# tests/test_tls.py makes certificates with the openssl command
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# tests/test_cluster.py finds a launcher's children with pgrep
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${need_apt[*]}; install them with: sudo apt-get install ${need_apt[*]}" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
