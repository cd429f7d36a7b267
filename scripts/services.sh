#!/usr/bin/env bash
# The services STORM runs against in tests and `make run-cluster`, started here without Docker:
#
#   scripts/services.sh up|down|status|env [all|pg|pulsar|hazelcast|toxiproxy]      (default: all)
#
#   up      start what is not running yet; a running service (pid file + health check) is reused.
#   down    stop what this script started, by the PID it recorded (TERM, wait, then KILL).  It never
#           touches a process it did not start, even one listening on the same port.
#   status  say what runs (exit 3 when something asked for does not).
#   env     print KEY=VALUE lines for the tests: STORM_TEST_PG_URL, STORM_TEST_PULSAR_URL,
#           STORM_TEST_PULSAR_ADMIN_URL, STORM_TEST_HAZELCAST_MEMBERS, STORM_TEST_TOXIPROXY_URL.
#
# PostgreSQL is scripts/pg.sh (Debian packages).  Pulsar 4.0 (standalone: broker + one bookie, with its
# metadata in a ZooKeeper of its own, started and stopped with it) and Hazelcast 5.x (one member) are plain
# JVMs whose jars Maven resolves from Maven Central once into a cache; see docs/operations.md for what runs
# where and for troubleshooting.  Toxiproxy (the
# TCP proxy the chaos experiments put between STORM and those services, chaos-experiments/) is built once
# from the Go module proxy (`go install`) into the same cache.
#
# Settings (environment):
#   STORM_SERVICES_DIR        default $PWD/.services: data in <dir>/pulsar, <dir>/hazelcast, logs in
#                             <dir>/logs/{pulsar,hazelcast}.log, PIDs in <dir>/{pulsar,hazelcast}.pid
#   STORM_SERVICES_CACHE      default ${XDG_CACHE_HOME:-$HOME/.cache}/storm: the resolved jars, one
#                             directory per product and version (pulsar-4.0.7/lib, hazelcast-5.6.0/lib)
#   STORM_PULSAR_PORT         6650   binary protocol        STORM_PULSAR_HTTP_PORT   8080  admin/HTTP
#   STORM_PULSAR_BOOKIE_PORT  3181   the embedded bookie    STORM_HAZELCAST_PORT     5701
#   STORM_PULSAR_ZK_PORT      Pulsar's ZooKeeper (metadata): the bookie port minus 1000 (3181 -> 2181),
#                             so instances with their own bookie ports do not collide
#   STORM_PULSAR_HEAP         -Xms256m -Xmx1g               STORM_PULSAR_DIRECT_MEMORY 512m
#   STORM_HAZELCAST_HEAP      -Xms128m -Xmx512m
#   STORM_PULSAR_VERSION, STORM_HAZELCAST_VERSION   override the versions pinned in the poms
#   STORM_SERVICES_START_TIMEOUT  seconds to wait for a service to become healthy (default 180)
#   STORM_MAVEN_SETTINGS      Maven settings file (default scripts/services/maven-settings.xml: Central only)
#   STORM_PULSAR_LOG_LEVEL    info
#   STORM_TOXIPROXY_PORT      8474   Toxiproxy's HTTP API (its proxies listen on ports the chaos runner picks)
#   STORM_TOXIPROXY_VERSION   2.12.0 (github.com/Shopify/toxiproxy/v2/cmd/server@v<version>; needs `go`)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/scripts/services"
SERVICES_DIR="${STORM_SERVICES_DIR:-$PWD/.services}"
# Absolute: the JVMs run from their data directories, and pid_of matches this path in command lines.
SERVICES_DIR="$(mkdir -p "$SERVICES_DIR" && cd "$SERVICES_DIR" && pwd)"
export STORM_SERVICES_DIR="$SERVICES_DIR"  # pg.sh uses the same directory
LOG_DIR="$SERVICES_DIR/logs"
CACHE_ROOT="${STORM_SERVICES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/storm}"
START_TIMEOUT="${STORM_SERVICES_START_TIMEOUT:-180}"
MAVEN_SETTINGS="${STORM_MAVEN_SETTINGS:-$HERE/maven-settings.xml}"

PULSAR_PORT="${STORM_PULSAR_PORT:-6650}"
PULSAR_HTTP_PORT="${STORM_PULSAR_HTTP_PORT:-8080}"
PULSAR_BOOKIE_PORT="${STORM_PULSAR_BOOKIE_PORT:-3181}"
PULSAR_ZK_PORT="${STORM_PULSAR_ZK_PORT:-$((PULSAR_BOOKIE_PORT - 1000))}"
PULSAR_HEAP="${STORM_PULSAR_HEAP:--Xms256m -Xmx1g}"
PULSAR_DIRECT_MEMORY="${STORM_PULSAR_DIRECT_MEMORY:-512m}"
HAZELCAST_PORT="${STORM_HAZELCAST_PORT:-5701}"
HAZELCAST_HEAP="${STORM_HAZELCAST_HEAP:--Xms128m -Xmx512m}"
TOXIPROXY_PORT="${STORM_TOXIPROXY_PORT:-8474}"
TOXIPROXY_VERSION="${STORM_TOXIPROXY_VERSION:-2.12.0}"

say() { echo "services.sh: $*"; }
die() { echo "services.sh: error: $*" >&2; exit 1; }

pom_property() {  # pom_property <pom> <name>: a <properties> value
    sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$1" | head -n1
}
PULSAR_VERSION="${STORM_PULSAR_VERSION:-$(pom_property "$HERE/pulsar/pom.xml" pulsar.version)}"
HAZELCAST_VERSION="${STORM_HAZELCAST_VERSION:-$(pom_property "$HERE/hazelcast/pom.xml" hazelcast.version)}"

# --- tools -------------------------------------------------------------------------------------------

is_root() { [ "$(id -u)" = 0 ]; }

# apt_install <what is missing> <packages...>: install with apt-get as root, else explain what to install.
apt_install() {
    local what="$1"; shift
    if ! is_root; then die "$what is missing; install it (Debian/Ubuntu: sudo apt-get install $*)"; fi
    command -v apt-get >/dev/null 2>&1 \
        || die "$what is missing and apt-get is not available to install it; install $* by hand"
    say "$what is missing; installing $* with apt-get" >&2
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; } >&2 \
        || die "$what is missing and 'apt-get install $*' failed; install it by hand"
}

java_major() {
    java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.[0-9]*\)*.*".*/\1/p' | head -n1
}

ensure_java() {
    command -v java >/dev/null 2>&1 || apt_install "java (a Java 17+ runtime)" default-jre-headless
    local major
    major="$(java_major)"
    [ -n "$major" ] || die "could not read the Java version from 'java -version'"
    [ "$major" -ge 17 ] || die "java $major found, Pulsar 4.0 and Hazelcast 5.6 need Java 17 or newer" \
        "(set PATH or JAVA_HOME to a newer JDK)"
}

ensure_mvn() {
    command -v mvn >/dev/null 2>&1 || apt_install "mvn (Apache Maven, to fetch the Pulsar/Hazelcast jars)" maven
}

ensure_curl() {
    command -v curl >/dev/null 2>&1 || apt_install "curl (for the Pulsar health check)" curl
}

# --- processes ----------------------------------------------------------------------------------------

# pid_of <name>: the recorded PID when that process still runs and is ours (its command line names our
# services directory and its main class), else nothing.  A stale pid file is removed.
pid_of() {
    local name="$1" marker="$2" file="$SERVICES_DIR/$1.pid" pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] \
        && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$SERVICES_DIR/$name"; then
        echo "$pid"
    else
        rm -f "$file"
    fi
}

port_open() {  # port_open <port>: something accepts TCP connections on 127.0.0.1:<port>
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

require_free_port() {  # require_free_port <port> <what> <env var>
    if port_open "$1"; then
        die "port $1 ($2) is already taken by another process (none recorded in $SERVICES_DIR);" \
            "stop it, or choose another port with $3=<port>"
    fi
}

# stop_pid <name> <pid>: TERM, wait up to 30 s, then KILL.
stop_pid() {
    local name="$1" pid="$2" waited=0
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge 30 ]; then
            say "$name did not stop within 30 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1; waited=$((waited + 1))
    done
    rm -f "$SERVICES_DIR/$name.pid"
    say "$name stopped"
}

# launch <name> <log> <command...>: start in its own session (Ctrl-C in the calling terminal does not
# reach it), detached from stdin, output appended to <log>; records and prints the PID.
launch() {
    local name="$1" log="$2"; shift 2
    mkdir -p "$LOG_DIR"
    echo "=== $(date -u '+%Y-%m-%dT%H:%M:%SZ') services.sh: starting $name: $*" >>"$log"
    setsid "$@" </dev/null >>"$log" 2>&1 &
    echo $! >"$SERVICES_DIR/$name.pid"
}

# wait_until <name> <pid> <log> <check command...>: poll every second, print a dot, give up after
# $START_TIMEOUT s or when the process dies (showing the end of its log).
wait_until() {
    local name="$1" pid="$2" log="$3"; shift 3
    local waited=0
    printf 'services.sh: waiting for %s to become healthy (up to %s s) ' "$name" "$START_TIMEOUT"
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo
            rm -f "$SERVICES_DIR/$name.pid"
            die "$name exited during start-up; last lines of $log:
$(tail -n 40 "$log")"
        fi
        if [ "$waited" -ge "$START_TIMEOUT" ]; then
            echo
            die "$name did not become healthy within $START_TIMEOUT s (it is still running as pid $pid;" \
                "'scripts/services.sh down $name' stops it); last lines of $log:
$(tail -n 40 "$log")"
        fi
        printf '.'; sleep 1; waited=$((waited + 1))
    done
    echo " ok (${waited} s)"
}

# --- jars ----------------------------------------------------------------------------------------------

# resolve_jars <product> <version> <version property>: <cache>/<product>-<version>/lib, resolved once.
# The stamp holds the pom's hash, so editing the pom resolves again.
resolve_jars() {
    local product="$1" version="$2" property="$3"
    local pom="$HERE/$product/pom.xml" dir="$CACHE_ROOT/$product-$version"
    local stamp="$dir/.resolved" want
    want="$(sha256sum "$pom" | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$dir/lib" ]; then
        echo "$dir/lib"; return 0
    fi
    ensure_mvn
    mkdir -p "$dir" "$LOG_DIR"
    local mvn_log="$LOG_DIR/maven-$product.log"
    local size="a few MB"
    [ "$product" = pulsar ] && size="~240 MB, the first run takes a few minutes"
    say "resolving $product $version jars from Maven Central into $dir ($size; done once; log: $mvn_log)" >&2
    rm -rf "$dir/lib.partial"
    local settings=()
    [ -n "$MAVEN_SETTINGS" ] && settings=(-s "$MAVEN_SETTINGS")
    # Maven's own "Downloading/Downloaded" lines are the progress; they also go to the log.
    if ! mvn -B "${settings[@]}" -f "$pom" "-D$property=$version" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir/lib.partial" \
            2>&1 | tee "$mvn_log" | grep --line-buffered -E '^\[INFO\] Downloaded from|BUILD|ERROR' >&2; then
        :
    fi
    if ! grep -q 'BUILD SUCCESS' "$mvn_log"; then
        rm -rf "$dir/lib.partial"
        die "Maven could not resolve $product $version (see $mvn_log; no network to Maven Central, or a" \
            "version missing there: try STORM_${product^^}_VERSION=<another version>)"
    fi
    rm -rf "$dir/lib"
    mv "$dir/lib.partial" "$dir/lib"
    echo "$want" >"$stamp"
    say "$product jars ready in $dir/lib" >&2
    echo "$dir/lib"
}

# --- PostgreSQL (scripts/pg.sh) -------------------------------------------------------------------------

pg_up() { "$ROOT/scripts/pg.sh" up; }
pg_down() { "$ROOT/scripts/pg.sh" down; }
pg_status() { "$ROOT/scripts/pg.sh" status; }
pg_env() { echo "STORM_TEST_PG_URL=$("$ROOT/scripts/pg.sh" url)"; }

# --- Pulsar ----------------------------------------------------------------------------------------------

PULSAR_MAIN="org.apache.pulsar.PulsarStandaloneStarter"
PULSAR_DATA="$SERVICES_DIR/pulsar"
PULSAR_LOG="$LOG_DIR/pulsar.log"

pulsar_healthy() {
    [ "$(curl -fsS --max-time 5 "http://127.0.0.1:$PULSAR_HTTP_PORT/admin/v2/brokers/health" 2>/dev/null)" = "ok" ]
}

loopback_interface() {
    if [ -d /sys/class/net/lo ]; then echo lo; elif ifconfig lo0 >/dev/null 2>&1; then echo lo0; else echo lo; fi
}

pulsar_render_config() {
    sed -e "s|@PULSAR_PORT@|$PULSAR_PORT|g" -e "s|@PULSAR_HTTP_PORT@|$PULSAR_HTTP_PORT|g" \
        -e "s|@BOOKIE_PORT@|$PULSAR_BOOKIE_PORT|g" -e "s|@DATA_DIR@|$PULSAR_DATA/data|g" \
        -e "s|@LOOPBACK_IF@|$(loopback_interface)|g" \
        "$HERE/pulsar/standalone.conf.template" >"$PULSAR_DATA/standalone.conf"
    cp "$HERE/pulsar/log4j2.xml" "$PULSAR_DATA/log4j2.xml"
}

# --- Pulsar's ZooKeeper (its metadata store) ------------------------------------------------------------
# Not the standalone's default RocksDB metadata store: Pulsar 4.0's RocksdbMetadataStore commits every write
# synchronously, fsync included, on the calling thread, often a broker I/O thread (pulsar-io), which serves
# none of its client connections (nor, unless the BookKeeper client has threads of its own, its bookie
# channels) meanwhile.  Thousands of topic, ledger and cursor creations (storm day, 100 000 users) stalled
# the broker with the CPU idle.  ZooKeeper is called asynchronously and commits in batches on its own
# threads.  Not the standalone's embedded ZooKeeper (PULSAR_STANDALONE_USE_ZOOKEEPER=1) either: that one
# listens on every interface.  Same jars as Pulsar; config in <dir>/zookeeper, log in <dir>/logs/zookeeper.log,
# data in <dir>/pulsar/data/zookeeper, next to the bookie's: they go together (a bookie without its ledgers'
# metadata, or the reverse, does not start), so removing <dir>/pulsar resets both.
ZK_MAIN="org.apache.zookeeper.server.ZooKeeperServerMain"
ZK_DIR="$SERVICES_DIR/zookeeper"
ZK_LOG="$LOG_DIR/zookeeper.log"

zookeeper_healthy() { port_open "$PULSAR_ZK_PORT"; }

zookeeper_up() {  # zookeeper_up <lib dir>: start Pulsar's ZooKeeper unless it runs
    local pid
    pid="$(pid_of zookeeper "$ZK_MAIN")"
    if [ -n "$pid" ]; then
        wait_until zookeeper "$pid" "$ZK_LOG" zookeeper_healthy
        return 0
    fi
    require_free_port "$PULSAR_ZK_PORT" "Pulsar's ZooKeeper" STORM_PULSAR_ZK_PORT
    mkdir -p "$ZK_DIR" "$PULSAR_DATA/data/zookeeper"
    printf '%s\n' "# Written by scripts/services.sh at each start." "dataDir=$PULSAR_DATA/data/zookeeper" \
        "clientPort=$PULSAR_ZK_PORT" "clientPortAddress=127.0.0.1" "tickTime=2000" "maxClientCnxns=0" \
        "admin.enableServer=false" "autopurge.snapRetainCount=3" "autopurge.purgeInterval=1" >"$ZK_DIR/zoo.cfg"
    cp "$HERE/pulsar/log4j2.xml" "$ZK_DIR/log4j2.xml"
    say "starting zookeeper for pulsar (log: $ZK_LOG, data: $PULSAR_DATA/data/zookeeper)"
    (cd "$ZK_DIR" && launch zookeeper "$ZK_LOG" java -Xms64m -Xmx256m -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
        -Djava.net.preferIPv4Stack=true -Djute.maxbuffer=10485760 -Dzookeeper.admin.enableServer=false \
        "-Dlog4j.configurationFile=$ZK_DIR/log4j2.xml" -Dlog4j2.is.webapp=false -Dlog4j.shutdownHookEnabled=false \
        "-Dstorm.log.file=$ZK_LOG" "-Dstorm.log.level=${STORM_PULSAR_LOG_LEVEL:-info}" \
        -cp "$1/*" "$ZK_MAIN" "$ZK_DIR/zoo.cfg")
    pid="$(cat "$SERVICES_DIR/zookeeper.pid")"
    wait_until zookeeper "$pid" "$ZK_LOG" zookeeper_healthy
    say "zookeeper ready (pid $pid): 127.0.0.1:$PULSAR_ZK_PORT"
}

# Data written with the RocksDB metadata store (services.sh before 2026-12-07) cannot be read with ZooKeeper
# metadata (the bookie's cookie and every ledger are registered in RocksDB): move it aside once, say so.
pulsar_move_rocksdb_data() {
    if [ -d "$PULSAR_DATA/data/metadata" ]; then
        local aside
        aside="$PULSAR_DATA/data.rocksdb-metadata.$(date -u +%Y%m%dT%H%M%SZ)"
        mv "$PULSAR_DATA/data" "$aside"
        say "pulsar now keeps its metadata in ZooKeeper; the data written with RocksDB metadata was moved to" \
            "$aside (delete it when you no longer need it); starting empty"
    fi
}

pulsar_up() {
    mkdir -p "$SERVICES_DIR" "$LOG_DIR"
    local pid
    pid="$(pid_of pulsar "$PULSAR_MAIN")"
    if [ -n "$pid" ]; then
        ensure_curl
        if pulsar_healthy; then
            say "pulsar already running (pid $pid): pulsar://127.0.0.1:$PULSAR_PORT, http://127.0.0.1:$PULSAR_HTTP_PORT"
            return 0
        fi
        say "pulsar runs (pid $pid) but is not healthy yet; waiting for it"
        wait_until pulsar "$pid" "$PULSAR_LOG" pulsar_healthy
        say "pulsar ready (pid $pid): pulsar://127.0.0.1:$PULSAR_PORT, admin http://127.0.0.1:$PULSAR_HTTP_PORT"
        return 0
    fi
    ensure_java
    ensure_curl
    require_free_port "$PULSAR_PORT" "Pulsar binary protocol" STORM_PULSAR_PORT
    require_free_port "$PULSAR_HTTP_PORT" "Pulsar admin HTTP" STORM_PULSAR_HTTP_PORT
    require_free_port "$PULSAR_BOOKIE_PORT" "Pulsar's embedded bookie" STORM_PULSAR_BOOKIE_PORT
    local lib
    lib="$(resolve_jars pulsar "$PULSAR_VERSION" pulsar.version)"
    pulsar_move_rocksdb_data
    zookeeper_up "$lib"
    mkdir -p "$PULSAR_DATA/data"
    pulsar_render_config
    # JVM flags: those Pulsar's own bin/pulsar passes on Java 17+ (reflective access for Netty, BookKeeper's
    # fadvise/CRC32C and the JVM metrics), its metadata drivers for the embedded bookie, and our logging.
    local opts=(
        $PULSAR_HEAP "-XX:MaxDirectMemorySize=$PULSAR_DIRECT_MEMORY" -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
        --add-opens java.base/java.io=ALL-UNNAMED --add-opens java.base/java.util.zip=ALL-UNNAMED
        --add-opens java.base/java.nio=ALL-UNNAMED --add-opens java.base/jdk.internal.misc=ALL-UNNAMED
        --add-opens java.base/sun.net=ALL-UNNAMED --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.management/sun.management=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        -Dio.netty.tryReflectionSetAccessible=true -Djava.net.preferIPv4Stack=true -Djute.maxbuffer=10485760
        -Dbookkeeper.metadata.bookie.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataBookieDriver
        -Dbookkeeper.metadata.client.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataClientDriver
        "-Dlog4j.configurationFile=$PULSAR_DATA/log4j2.xml" -Dlog4j2.is.webapp=false
        -Dlog4j.shutdownHookEnabled=false "-Dstorm.log.file=$PULSAR_LOG"
        "-Dstorm.log.level=${STORM_PULSAR_LOG_LEVEL:-info}"
        -cp "$lib/*"
    )
    say "starting pulsar $PULSAR_VERSION standalone (log: $PULSAR_LOG, data: $PULSAR_DATA/data)"
    # cd: PulsarStandalone resolves a few defaults (functions worker config, nar extraction) from the cwd.
    (cd "$PULSAR_DATA" && launch pulsar "$PULSAR_LOG" java "${opts[@]}" "$PULSAR_MAIN" \
        --config "$PULSAR_DATA/standalone.conf" --no-functions-worker --no-stream-storage \
        --metadata-url "zk:127.0.0.1:$PULSAR_ZK_PORT" \
        --bookkeeper-dir "$PULSAR_DATA/data/bookkeeper" --bookkeeper-port "$PULSAR_BOOKIE_PORT" \
        --advertised-address 127.0.0.1)
    pid="$(cat "$SERVICES_DIR/pulsar.pid")"
    wait_until pulsar "$pid" "$PULSAR_LOG" pulsar_healthy
    say "pulsar ready (pid $pid): pulsar://127.0.0.1:$PULSAR_PORT, admin http://127.0.0.1:$PULSAR_HTTP_PORT"
}

# jvm_down <name> <main class>: stop what this script started, by its recorded PID.
jvm_down() {
    local pid
    pid="$(pid_of "$1" "$2")"
    if [ -n "$pid" ]; then stop_pid "$1" "$pid"; else say "$1 not running (started by this script)"; fi
}

# jvm_status <name> <main class> <health check> <healthy: rest of the line> <unhealthy: why>
jvm_status() {
    local pid
    pid="$(pid_of "$1" "$2")"
    if [ -z "$pid" ]; then say "$1 not running"; return 3; fi
    if "$3"; then say "$1 running (pid $pid$4"; else say "$1 running (pid $pid) but $5"; return 3; fi
}

pulsar_down() { jvm_down pulsar "$PULSAR_MAIN"; jvm_down zookeeper "$ZK_MAIN"; }

pulsar_status() {
    local rc=0
    jvm_status zookeeper "$ZK_MAIN" zookeeper_healthy ", listening): 127.0.0.1:$PULSAR_ZK_PORT" \
        "not listening (starting, or see $ZK_LOG)" || rc=$?
    jvm_status pulsar "$PULSAR_MAIN" pulsar_healthy \
        ", healthy): pulsar://127.0.0.1:$PULSAR_PORT, http://127.0.0.1:$PULSAR_HTTP_PORT" \
        "not healthy (starting, or see $PULSAR_LOG)" || rc=$?
    return "$rc"
}

pulsar_env() {
    echo "STORM_TEST_PULSAR_URL=pulsar://127.0.0.1:$PULSAR_PORT"
    echo "STORM_TEST_PULSAR_ADMIN_URL=http://127.0.0.1:$PULSAR_HTTP_PORT"
}

# --- Hazelcast -------------------------------------------------------------------------------------------

HAZELCAST_MAIN="com.hazelcast.core.server.HazelcastMemberStarter"
HAZELCAST_DATA="$SERVICES_DIR/hazelcast"
HAZELCAST_LOG="$LOG_DIR/hazelcast.log"

# Healthy: the port accepts connections and this run of the member logged "is STARTED" (the log is
# appended to, so only lines after our own start marker count).
hazelcast_healthy() {
    port_open "$HAZELCAST_PORT" || return 1
    [ -f "$HAZELCAST_LOG" ] || return 1
    awk '/services.sh: starting hazelcast/ { started = 0 } /is STARTED/ { started = 1 } END { exit !started }' \
        "$HAZELCAST_LOG"
}

hazelcast_up() {
    mkdir -p "$SERVICES_DIR" "$LOG_DIR"
    local pid
    pid="$(pid_of hazelcast "$HAZELCAST_MAIN")"
    if [ -n "$pid" ]; then
        if ! hazelcast_healthy; then
            say "hazelcast runs (pid $pid) but is not started yet; waiting for it"
            wait_until hazelcast "$pid" "$HAZELCAST_LOG" hazelcast_healthy
        fi
        say "hazelcast already running (pid $pid): 127.0.0.1:$HAZELCAST_PORT, cluster storm"
        return 0
    fi
    ensure_java
    require_free_port "$HAZELCAST_PORT" "Hazelcast member" STORM_HAZELCAST_PORT
    local lib
    lib="$(resolve_jars hazelcast "$HAZELCAST_VERSION" hazelcast.version)"
    mkdir -p "$HAZELCAST_DATA"
    # JVM flags: the --add-modules/--add-exports/--add-opens Hazelcast documents for Java 17+ (without them
    # it logs warnings and falls back to slower paths), the config and its ${storm.hazelcast.port}.
    local opts=(
        $HAZELCAST_HEAP -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
        --add-modules java.se --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.management/sun.management=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        -Djava.net.preferIPv4Stack=true "-Dhazelcast.config=$HERE/hazelcast/hazelcast.xml"
        "-Dstorm.hazelcast.port=$HAZELCAST_PORT" "-Dstorm.services.dir=$HAZELCAST_DATA"
        -cp "$lib/*"
    )
    say "starting hazelcast $HAZELCAST_VERSION (log: $HAZELCAST_LOG)"
    (cd "$HAZELCAST_DATA" && launch hazelcast "$HAZELCAST_LOG" java "${opts[@]}" "$HAZELCAST_MAIN")
    pid="$(cat "$SERVICES_DIR/hazelcast.pid")"
    wait_until hazelcast "$pid" "$HAZELCAST_LOG" hazelcast_healthy
    say "hazelcast ready (pid $pid): 127.0.0.1:$HAZELCAST_PORT, cluster storm"
}

hazelcast_down() { jvm_down hazelcast "$HAZELCAST_MAIN"; }

hazelcast_status() {
    jvm_status hazelcast "$HAZELCAST_MAIN" hazelcast_healthy "): 127.0.0.1:$HAZELCAST_PORT, cluster storm" \
        "not started yet (see $HAZELCAST_LOG)"
}

hazelcast_env() { echo "STORM_TEST_HAZELCAST_MEMBERS=127.0.0.1:$HAZELCAST_PORT"; }

# --- Toxiproxy -------------------------------------------------------------------------------------------

TOXIPROXY_DATA="$SERVICES_DIR/toxiproxy"
TOXIPROXY_LOG="$LOG_DIR/toxiproxy.log"
TOXIPROXY_MARKER="toxiproxy-"  # the binary lives in <cache>/toxiproxy-<version>/bin/server

toxiproxy_healthy() {
    curl -fsS --max-time 5 "http://127.0.0.1:$TOXIPROXY_PORT/version" >/dev/null 2>&1
}

# toxiproxy_binary: <cache>/toxiproxy-<version>/bin/server, built once with `go install` from the Go module
# proxy (a static binary; ~30 s the first time).
toxiproxy_binary() {
    local dir="$CACHE_ROOT/toxiproxy-$TOXIPROXY_VERSION"
    if [ -x "$dir/bin/server" ]; then echo "$dir/bin/server"; return 0; fi
    command -v go >/dev/null 2>&1 \
        || die "toxiproxy $TOXIPROXY_VERSION is not built yet and 'go' (1.22+) is missing to build it;" \
            "install Go (https://go.dev/dl/) or put a toxiproxy server binary at $dir/bin/server"
    mkdir -p "$dir" "$LOG_DIR"
    say "building toxiproxy $TOXIPROXY_VERSION with go install into $dir/bin (done once; log: $LOG_DIR/go-toxiproxy.log)" >&2
    rm -rf "$dir/bin.partial"
    if ! GOBIN="$dir/bin.partial" GOFLAGS=-mod=mod go install \
            "github.com/Shopify/toxiproxy/v2/cmd/server@v$TOXIPROXY_VERSION" >"$LOG_DIR/go-toxiproxy.log" 2>&1; then
        rm -rf "$dir/bin.partial"
        die "go install of toxiproxy $TOXIPROXY_VERSION failed; last lines of $LOG_DIR/go-toxiproxy.log:
$(tail -n 20 "$LOG_DIR/go-toxiproxy.log")"
    fi
    rm -rf "$dir/bin"
    mv "$dir/bin.partial" "$dir/bin"
    echo "$dir/bin/server"
}

toxiproxy_up() {
    mkdir -p "$SERVICES_DIR" "$LOG_DIR" "$TOXIPROXY_DATA"
    ensure_curl
    local pid bin
    pid="$(pid_of toxiproxy "$TOXIPROXY_MARKER")"
    if [ -n "$pid" ]; then
        toxiproxy_healthy || wait_until toxiproxy "$pid" "$TOXIPROXY_LOG" toxiproxy_healthy
        say "toxiproxy already running (pid $pid): http://127.0.0.1:$TOXIPROXY_PORT"
        return 0
    fi
    require_free_port "$TOXIPROXY_PORT" "Toxiproxy HTTP API" STORM_TOXIPROXY_PORT
    bin="$(toxiproxy_binary)"
    # -config: no proxy at start (the chaos runner creates its own); it also puts our services directory in
    # the command line, which is how pid_of recognises the process as ours.
    echo '[]' >"$TOXIPROXY_DATA/proxies.json"
    say "starting toxiproxy $TOXIPROXY_VERSION on 127.0.0.1:$TOXIPROXY_PORT (log: $TOXIPROXY_LOG)"
    launch toxiproxy "$TOXIPROXY_LOG" "$bin" -host 127.0.0.1 -port "$TOXIPROXY_PORT" \
        -config "$TOXIPROXY_DATA/proxies.json"
    pid="$(cat "$SERVICES_DIR/toxiproxy.pid")"
    wait_until toxiproxy "$pid" "$TOXIPROXY_LOG" toxiproxy_healthy
    say "toxiproxy ready (pid $pid): http://127.0.0.1:$TOXIPROXY_PORT"
}

toxiproxy_down() { jvm_down toxiproxy "$TOXIPROXY_MARKER"; }

toxiproxy_status() {
    jvm_status toxiproxy "$TOXIPROXY_MARKER" toxiproxy_healthy ", healthy): http://127.0.0.1:$TOXIPROXY_PORT" \
        "its API does not answer (see $TOXIPROXY_LOG)"
}

toxiproxy_env() { echo "STORM_TEST_TOXIPROXY_URL=http://127.0.0.1:$TOXIPROXY_PORT"; }

# --- main ----------------------------------------------------------------------------------------------

usage() { echo "usage: $0 up|down|status|env [all|pg|pulsar|hazelcast|toxiproxy]" >&2; exit 2; }

command="${1:-}"
target="${2:-all}"
case "$target" in
    all) services=(pg pulsar hazelcast toxiproxy) ;;
    pg|pulsar|hazelcast|toxiproxy) services=("$target") ;;
    *) usage ;;
esac

case "$command" in
    up) for s in "${services[@]}"; do "${s}_up"; done ;;
    # Stop in reverse order of start.
    down) for ((i = ${#services[@]} - 1; i >= 0; i--)); do "${services[$i]}_down"; done ;;
    status)
        rc=0
        for s in "${services[@]}"; do "${s}_status" || rc=3; done
        exit "$rc" ;;
    env) for s in "${services[@]}"; do "${s}_env"; done ;;
    *) usage ;;
esac
