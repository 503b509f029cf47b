# Sourced by test.sh after scripts/need-postgres.sh: starts a PostgreSQL
# server of its own for the tests, in a temporary folder, on a free
# loopback port, and stops and removes it when the script exits. Sets
# THROWAWAY_POSTGRES to its admin URL. Trust authentication on loopback
# and fsync off: it holds nothing but test data and lives minutes.
#
# PostgreSQL refuses to run as root; as root it runs as the `postgres`
# account that Debian's package makes.
pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/tasuki-pg.XXXXXX")
pg_as=()
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$pg_dir"
    pg_as=(runuser -u postgres --)
fi
stop_throwaway_postgres() {
    "${pg_as[@]}" "$PG_BIN/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
}
trap stop_throwaway_postgres EXIT
"${pg_as[@]}" "$PG_BIN/initdb" -D "$pg_dir/data" -U tasuki --auth=trust --no-sync -E UTF8 >"$pg_dir/initdb.log" 2>&1 || {
    cat "$pg_dir/initdb.log" >&2
    echo "throwaway-postgres: initdb failed" >&2
    exit 1
}
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${pg_as[@]}" "$PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=500" \
    start >/dev/null || {
    cat "$pg_dir/server.log" >&2
    echo "throwaway-postgres: the server did not start" >&2
    exit 1
}
THROWAWAY_POSTGRES="postgres://tasuki@127.0.0.1:$pg_port/postgres"
export THROWAWAY_POSTGRES
echo "throwaway PostgreSQL at $THROWAWAY_POSTGRES" >&2
