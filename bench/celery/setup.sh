#!/usr/bin/env bash
# Installs what the Celery peer benchmark needs; safe to run again.
#
#   bench/celery/setup.sh
#
# - redis-server (Debian package) when it is missing; needs root for apt-get.
# - python3 -m venv (python3-venv from Debian if the venv module is missing).
# - A virtualenv at $CELERY_BENCH_VENV (default: <repo>/target/bench-venv-celery)
#   with the exact pins of bench/celery/requirements.txt, reinstalled only
#   when that file changes.
# Progress goes to stderr; nothing is printed on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${CELERY_BENCH_VENV:-$root/target/bench-venv-celery}"
requirements="$here/requirements.txt"

say() { echo "setup.sh: $*" >&2; }

python_has_venv() {
  command -v python3 >/dev/null 2>&1 &&
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1
}

missing_pkgs=()
command -v redis-server >/dev/null 2>&1 || missing_pkgs+=(redis-server)
command -v python3 >/dev/null 2>&1 || missing_pkgs+=(python3)
python_has_venv || missing_pkgs+=(python3-venv)

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing: ${missing_pkgs[*]}"
    say "install them as root: apt-get install -y ${missing_pkgs[*]}"
    exit 1
  fi
  say "installing ${missing_pkgs[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${missing_pkgs[@]}" >&2 ||
    { apt-get update >&2 && apt-get install -y "${missing_pkgs[@]}" >&2; }
  if ! python_has_venv; then
    say "python3 still has no venv/ensurepip module (a python3 other than Debian's is first on PATH?)"
    exit 1
  fi
fi

stamp="$venv/.requirements.sha256"
want_stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ -x "$venv/bin/celery" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want_stamp" ]; then
  say "virtualenv $venv is up to date"
else
  say "installing the pins of $requirements into $venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  echo "$want_stamp" > "$stamp"
fi
say "redis-server: $(redis-server --version | head -1)"
say "celery: $("$venv/bin/celery" --version)"
