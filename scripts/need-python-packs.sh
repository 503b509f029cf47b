# Sourced by test.sh: the Python modules the shipped action packs and their
# tests need (packs/excel: openpyxl; the packs' own tests read their
# manifests with PyYAML), for the `python3` on PATH, which is the one a
# pack's `command` starts. Installed with pip when it can, else with
# apt-get as root on Debian or Ubuntu; otherwise the exact command is named.
python_modules_ok() { python3 -c 'import openpyxl, yaml' >/dev/null 2>&1; }
if ! python_modules_ok; then
    if python3 -m pip --version >/dev/null 2>&1; then
        echo "installing openpyxl and PyYAML for $(command -v python3) with pip…" >&2
        python3 -m pip install --quiet --disable-pip-version-check openpyxl pyyaml >&2 || true
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing python3-openpyxl and python3-yaml with apt-get…" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-openpyxl python3-yaml >/dev/null || true
    fi
fi
if ! python_modules_ok; then
    echo "The action packs' tests need the Python modules openpyxl and PyYAML for $(command -v python3):" >&2
    echo "  python3 -m pip install openpyxl pyyaml" >&2
    echo "  (Debian/Ubuntu system Python: sudo apt-get install -y python3-openpyxl python3-yaml)" >&2
    exit 1
fi
unset -f python_modules_ok
