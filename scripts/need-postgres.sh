# Sourced by test.sh: makes sure PostgreSQL's server programs (initdb,
# pg_ctl, postgres) and psql are there, installing them with apt-get when
# running as root on Debian or Ubuntu (as scripts/need-browser.sh does for
# Chromium), and otherwise saying exactly what to install. Sets PG_BIN to
# the folder of the server programs.
have() { command -v "$1" >/dev/null 2>&1; }
find_pg_bin() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$initdb" ] && have initdb; then
        initdb=$(command -v initdb)
    fi
    [ -n "$initdb" ] && dirname "$initdb"
}
PG_BIN=$(find_pg_bin || true)
if [ -z "$PG_BIN" ] || ! have psql; then
    if [ "$(id -u)" = 0 ] && have apt-get; then
        echo "installing PostgreSQL with apt-get…" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
        PG_BIN=$(find_pg_bin || true)
    fi
fi
if [ -z "$PG_BIN" ] || ! have psql; then
    echo "The hub's tests on PostgreSQL need its server (initdb, pg_ctl, postgres) and psql, which are missing." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y postgresql postgresql-client" >&2
    echo "  macOS:         brew install postgresql@16" >&2
    exit 1
fi
export PG_BIN
