#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
#   bash tests/run.sh [pytest args...]
# Real peers come from Debian (gearmand: gearman-job-server; gearman, gearadmin: gearman-tools;
# the Perl job server: gearman-server; chromium for the browser test),
# installed with apt-get when missing and running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# The C gearmand. Debian's gearman-server installs the Perl job server as /usr/bin/gearmand too
# (a script), which does not count here.
have_c_gearmand() {
  local dir
  for dir in ${PATH//:/ } /usr/sbin; do
    [ -x "$dir/gearmand" ] && [ "$(head -c2 "$dir/gearmand")" != '#!' ] && return 0
  done
  return 1
}

need_apt=()
have_c_gearmand || need_apt+=(gearman-job-server)
command -v gearman >/dev/null 2>&1 || need_apt+=(gearman-tools)
# tests/test_perl_server.py: the Perl Gearman::Server (and Gearman::Worker for a Perl worker)
perl -MGearman::Server -MGearman::Worker -e 1 >/dev/null 2>&1 || need_apt+=(gearman-server)
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
