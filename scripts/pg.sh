#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the tests: scripts/pg.sh up|down|url|status
#
#   up      initialise (first time) and start the cluster; reuses a running one.  Creates the superuser
#           role `storm` (password `storm`) and the database `storm_test`.
#   down    stop it (pg_ctl stop -m fast, found through the cluster's own postmaster.pid).
#   url     print the SQLAlchemy URL the tests use (STORM_TEST_PG_URL=$(scripts/pg.sh url)).
#   status  say whether it runs.
#
# Settings (environment):
#   STORM_SERVICES_DIR  default $PWD/.services; data in $STORM_SERVICES_DIR/pg, log in
#                       $STORM_SERVICES_DIR/logs/pg.log
#   STORM_PG_PORT       default 55432; the server listens on 127.0.0.1 only (and on a Unix socket in
#                       $DATA/run), with trust authentication: it is a test cluster, never a real one.
#   STORM_PG_MAX_CONNECTIONS  default 400, set at every start: a storm day runs six gateways, the
#                       consumers and the API, each with up to STORM_DB_POOL_SIZE +
#                       STORM_DB_POOL_OVERFLOW connections (20 by default; docs/database.md).
#
# Binaries come from the highest /usr/lib/postgresql/<version>/bin (the version that created the data
# directory when it exists); when there are none we try `apt-get install postgresql`.
#
# initdb and postgres refuse to run as root, so as root they run as the `postgres` system user (created
# when missing) through `runuser`, and the data directory belongs to that user.  When `postgres` cannot
# reach $STORM_SERVICES_DIR/pg (a parent directory it may not traverse, e.g. a private home), the data
# directory moves to /tmp/storm-pg-$UID-<hash of the services dir> instead: we do not chmod the user's
# directories.  The script says which one it uses.  The log file is opened by this shell, not by the
# server, so it always stays in $STORM_SERVICES_DIR/logs.
set -euo pipefail

SERVICES_DIR="${STORM_SERVICES_DIR:-$PWD/.services}"
PORT="${STORM_PG_PORT:-55432}"
MAX_CONNECTIONS="${STORM_PG_MAX_CONNECTIONS:-400}"
LOG_DIR="$SERVICES_DIR/logs"
LOG="$LOG_DIR/pg.log"
DB_NAME="storm_test"
DB_USER="storm"
DB_PASSWORD="storm"
PREFERRED_DATA="$SERVICES_DIR/pg"
FALLBACK_DATA="/tmp/storm-pg-$(id -u)-$(printf '%s' "$SERVICES_DIR" | sha256sum | cut -c1-12)"

say() { echo "pg.sh: $*"; }
die() { echo "pg.sh: error: $*" >&2; exit 1; }

url() { echo "postgresql+asyncpg://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME"; }

is_root() { [ "$(id -u)" = 0 ]; }

# Run a command as the cluster's owner (postgres when we are root, ourselves otherwise).
as_owner() {
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The data directory in use: an initialised one wins; otherwise the preferred one when reachable.
data_dir() {
    if [ -f "$PREFERRED_DATA/PG_VERSION" ]; then echo "$PREFERRED_DATA"
    elif [ -f "$FALLBACK_DATA/PG_VERSION" ]; then echo "$FALLBACK_DATA"
    else echo ""
    fi
}

find_bin() {
    local data="$1" version=""
    if [ -n "$data" ] && [ -f "$data/PG_VERSION" ]; then
        version="$(cat "$data/PG_VERSION")"
        if [ -x "/usr/lib/postgresql/$version/bin/postgres" ]; then
            echo "/usr/lib/postgresql/$version/bin"; return 0
        fi
        die "the data directory $data was created by PostgreSQL $version, whose binaries" \
            "(/usr/lib/postgresql/$version/bin) are gone; remove $data or install postgresql-$version"
    fi
    local best=""
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] || continue
        version="$(basename "$(dirname "$dir")")"
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$version" | sort -V | tail -n1)" = "$version" ]; then
            best="$version"
        fi
    done
    [ -n "$best" ] && echo "/usr/lib/postgresql/$best/bin"
    return 0
}

ensure_binaries() {
    local bin
    bin="$(find_bin "$1")"
    if [ -z "$bin" ]; then
        say "no PostgreSQL server under /usr/lib/postgresql/*/bin; installing it with apt-get" >&2
        if ! is_root; then
            die "PostgreSQL server binaries (initdb, pg_ctl, postgres) are missing and we are not root" \
                "to install them; install the 'postgresql' package"
        fi
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; } >&2; then
            die "PostgreSQL server binaries (initdb, pg_ctl, postgres under /usr/lib/postgresql/*/bin) are" \
                "missing and 'apt-get install postgresql' failed; install the 'postgresql' package by hand"
        fi
        bin="$(find_bin "$1")"
        [ -n "$bin" ] || die "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/postgres appeared"
    fi
    echo "$bin"
}

ensure_postgres_user() {
    is_root || return 0
    if ! id -u postgres >/dev/null 2>&1; then
        say "creating the postgres system user"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres \
            || die "could not create the 'postgres' system user (useradd)"
    fi
}

# Pick (and create) the data directory for a new cluster.
choose_data_dir() {
    local dir
    for dir in "$PREFERRED_DATA" "$FALLBACK_DATA"; do
        mkdir -p "$dir"
        if is_root; then chown postgres: "$dir"; fi
        chmod 700 "$dir"
        if as_owner test -w "$dir" -a -x "$dir"; then
            [ "$dir" = "$FALLBACK_DATA" ] && say "postgres cannot reach $PREFERRED_DATA; using $dir" >&2
            echo "$dir"; return 0
        fi
        [ "$dir" = "$PREFERRED_DATA" ] && rmdir "$dir" 2>/dev/null || true
    done
    die "neither $PREFERRED_DATA nor $FALLBACK_DATA is writable by the postgres user"
}

is_running() {
    local data="$1"
    [ -n "$data" ] && [ -f "$data/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

psql_admin() {
    # -X: ignore ~/.psqlrc; TCP because the socket directory may be off (long paths).
    as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@"
}

cmd_up() {
    ensure_postgres_user
    local data
    data="$(data_dir)"
    BIN="$(ensure_binaries "$data")"
    say "using PostgreSQL binaries in $BIN"
    mkdir -p "$LOG_DIR"

    if [ -z "$data" ]; then
        data="$(choose_data_dir)"
        say "initialising a new cluster in $data"
        as_owner "$BIN/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=trust \
            --encoding=UTF8 --locale=C >>"$LOG" 2>&1 || die "initdb failed; see $LOG"
        local sockets="$data/run"
        as_owner mkdir -p "$sockets"
        # Unix socket paths are limited to ~107 bytes; TCP alone is enough for us.
        [ "${#sockets}" -lt 90 ] || sockets=""
        cat >>"$data/postgresql.conf" <<EOF

# --- scripts/pg.sh: a throwaway test cluster (durability traded for speed) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockets'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100  # raised at every start: STORM_PG_MAX_CONNECTIONS
EOF
    else
        say "reusing the cluster in $data"
    fi

    if is_running "$data"; then
        local running_port
        running_port="$(sed -n 4p "$data/postmaster.pid")"
        [ "$running_port" = "$PORT" ] || die "the cluster already runs on port $running_port, not $PORT;" \
            "run 'scripts/pg.sh down' first or set STORM_PG_PORT=$running_port"
        say "already running on 127.0.0.1:$PORT"
    else
        say "starting on 127.0.0.1:$PORT (log: $LOG)"
        # This shell opens the log, so the server need not reach $LOG_DIR.
        as_owner "$BIN/pg_ctl" -D "$data" -w -t 60 -o "-p $PORT -c max_connections=$MAX_CONNECTIONS" start </dev/null >>"$LOG" 2>&1 \
            || die "PostgreSQL did not start; last lines of $LOG:
$(tail -n 20 "$LOG")"
    fi

    as_owner "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 30 || die "server not ready; see $LOG"

    if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != "1" ]; then
        say "creating superuser role $DB_USER"
        psql_admin -c "CREATE ROLE $DB_USER LOGIN SUPERUSER PASSWORD '$DB_PASSWORD'"
    fi
    if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
        say "creating database $DB_NAME"
        psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER"
    fi
    say "ready: $(url)"
}

cmd_down() {
    local data
    data="$(data_dir)"
    if [ -z "$data" ]; then say "no cluster (nothing in $PREFERRED_DATA or $FALLBACK_DATA)"; return 0; fi
    BIN="$(find_bin "$data")"
    mkdir -p "$LOG_DIR"
    if is_running "$data"; then
        say "stopping the cluster in $data"
        as_owner "$BIN/pg_ctl" -D "$data" -m fast -w stop >>"$LOG" 2>&1 || die "pg_ctl stop failed; see $LOG"
        say "stopped"
    else
        say "not running ($data)"
    fi
}

cmd_status() {
    local data
    data="$(data_dir)"
    if [ -n "$data" ]; then BIN="$(find_bin "$data")"; fi
    if is_running "$data"; then say "running: $(url) (data: $data)"; else say "not running"; return 3; fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    url) url ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|url|status" >&2; exit 2 ;;
esac
