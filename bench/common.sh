# Shared by the bench/ programs: a throwaway PostgreSQL cluster with
# entity_cache preloaded and a throwaway Redis, both on free loopback ports
# in one temp dir under /tmp, torn down on exit.  Source it, then call
# bench_start; everything else is a helper.
#
# The cluster keeps initdb's defaults (fsync on, synchronous_commit on,
# shared_buffers 128MB, full_page_writes on, autovacuum on) except what a
# benchmark needs to reach it and to preload the extension: it is meant to
# behave like a small real server, only on local disk under /tmp.

bench_here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$bench_here/scripts/lib.sh"

BENCH_DIR=
PGPORT_B=
REDIS_PORT=
REDIS_PID=
CLUSTER_PORTS=()	# start_redis_cluster: the primaries of a Redis Cluster
CLUSTER_PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

free_port() {
	python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# apply_variant VARIANT SETTING...: ALTER SYSTEM RESET each entity_cache
# SETTING, then, unless VARIANT is "defaults", set the comma-separated
# name=value pairs of VARIANT (e.g. "notify=off,redelete_delay=0"); the
# caller reloads.  How bench/drain and bench/latency compare worker settings.
apply_variant() {
	local variant=$1 name kv
	shift
	for name in "$@"; do
		bq "ALTER SYSTEM RESET entity_cache.$name" >/dev/null
	done
	[ "$variant" = defaults ] && return
	for kv in ${variant//,/ }; do
		bq "ALTER SYSTEM SET entity_cache.${kv%%=*} = '${kv#*=}'" >/dev/null
	done
}

# psql against the bench cluster as the postgres superuser
bpsql() {
	as_user env PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH_DIR" -p "$PGPORT_B" -U postgres -d postgres "$@"
}
# one value, unaligned
bq() { bpsql -At -c "$1"; }

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

bench_cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$BENCH_DIR" ] && [ -d "$BENCH_DIR" ]; then
		if [ -f "$BENCH_DIR/pgdata/postmaster.pid" ]; then
			as_user pg_ctl -D "$BENCH_DIR/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
		fi
		for pid in $REDIS_PID "${CLUSTER_PIDS[@]}"; do
			kill -CONT "$pid" 2>/dev/null || true
			kill -TERM "$pid" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -KILL "$pid" 2>/dev/null || true
		done
		if [ -n "${BENCH_KEEP:-}" ]; then
			log "BENCH_KEEP set: leaving $BENCH_DIR"
		else
			rm -rf "$BENCH_DIR"
		fi
	fi
	exit $rc
}

# bench_start [extra postgresql.conf lines...]
bench_start() {
	command -v pg_ctl >/dev/null || die "PostgreSQL binaries not found"
	command -v redis-server >/dev/null || die "redis-server not found (scripts/install-deps)"
	[ -f "$(pg_config --pkglibdir)/entity_cache.so" ] ||
		die "entity_cache is not installed: run make -C $bench_here install"

	BENCH_DIR=$(mktemp -d /tmp/ec_bench.XXXXXX)
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	chmod 755 "$BENCH_DIR"
	[ "$(id -u)" -eq 0 ] && chown "$EC_USER" "$BENCH_DIR"

	REDIS_PORT=$(free_port)
	as_user redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$BENCH_DIR" \
		--daemonize yes --pidfile "$BENCH_DIR/redis.pid" --logfile "$BENCH_DIR/redis.log" \
		--save '' --appendonly no >/dev/null
	for _ in $(seq 100); do
		[ -s "$BENCH_DIR/redis.pid" ] && [ "$(rcli PING 2>/dev/null)" = PONG ] && break
		sleep 0.05
	done
	[ "$(rcli PING 2>/dev/null)" = PONG ] || die "redis-server did not start"
	REDIS_PID=$(cat "$BENCH_DIR/redis.pid")

	PGPORT_B=$(free_port)
	as_user initdb -D "$BENCH_DIR/pgdata" -U postgres -A trust -E UTF8 --locale=C >"$BENCH_DIR/initdb.log" 2>&1 ||
		{ cat "$BENCH_DIR/initdb.log" >&2; die "initdb failed"; }
	{
		echo "port = $PGPORT_B"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$BENCH_DIR'"
		echo "max_connections = 50"
		echo "shared_preload_libraries = 'entity_cache'"
		echo "entity_cache.database = 'postgres'"
		echo "entity_cache.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'"
		echo "entity_cache.redis_timeout = 1000"
		for line in "$@"; do echo "$line"; done
	} >>"$BENCH_DIR/pgdata/postgresql.conf"
	as_user pg_ctl -D "$BENCH_DIR/pgdata" -l "$BENCH_DIR/postgres.log" -w start >/dev/null ||
		{ tail -n 30 "$BENCH_DIR/postgres.log" >&2; die "postgres did not start"; }
	log "cluster in $BENCH_DIR (port $PGPORT_B), redis on 127.0.0.1:$REDIS_PORT"
}

# app.entity as the application has it, with $1 rows (code entity_1 ...)
create_entity_table() {
	local rows=${1:-10000}
	bpsql <<EOF
DROP TABLE IF EXISTS app.entity CASCADE;
$(cat "$bench_here/scripts/app_entity.sql")
INSERT INTO app.entity
SELECT 'entity_' || g, (ARRAY['person','place','thing','event'])[1 + g % 4],
       'Entity ' || g, 'Entities ' || g, 'icon-' || (g % 50),
       ARRAY['entity_' || (1 + (g * 7) % $rows), 'entity_' || (1 + (g * 13) % $rows)],
       g % 10 <> 0, now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, $rows) g;
VACUUM ANALYZE app.entity;
EOF
}

# wait until the worker has applied everything committed so far
wait_sync() {
	local t=${1:-60}
	[ "$(bq "SELECT entity_cache.sync('$t s')")" = t ] || die "entity_cache.sync('$t s') timed out"
}

# settings that matter for comparing runs, one line
show_settings() {
	bq "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name)
	    FROM pg_settings WHERE name IN ('fsync','synchronous_commit','shared_buffers',
	      'wal_level','max_wal_size','checkpoint_timeout','full_page_writes','autovacuum',
	      'max_connections','wal_buffers','track_commit_timestamp')"
}

machine_line() {
	echo "machine: $(nproc) cpu ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "versions: $(as_user postgres --version), $(redis-server --version | cut -d' ' -f1-3), entity_cache.so installed $(date -u -r "$(pg_config --pkglibdir)/entity_cache.so" '+%F %T UTC'), tree at commit $(git -C "$bench_here" rev-parse --short HEAD 2>/dev/null || echo '?')"
}

# start_redis_cluster N: a Redis Cluster of N primaries (no replicas), each
# a redis-server without persistence in $BENCH_DIR/cluster.<port>, on
# loopback ports below 55535 (the cluster bus is port + 10000); joined with
# redis-cli --cluster create and waited for until cluster_state:ok.  Sets
# CLUSTER_PORTS and CLUSTER_PIDS (stopped by bench_cleanup).
start_redis_cluster() {
	local n=$1 port base i
	base=$(python3 - "$n" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(200):
    b = random.randrange(20000, 45000)
    if all(free(b + i) and free(b + i + 10000) for i in range(n)):
        print(b)
        break
PY
)
	[ -n "$base" ] || die "no free ports for a Redis Cluster"
	for i in $(seq 0 $((n - 1))); do
		port=$((base + i))
		mkdir -p "$BENCH_DIR/cluster.$port"
		[ "$(id -u)" -eq 0 ] && chown "$EC_USER" "$BENCH_DIR/cluster.$port"
		as_user redis-server --port "$port" --bind 127.0.0.1 --dir "$BENCH_DIR/cluster.$port" \
			--daemonize yes --pidfile "$BENCH_DIR/cluster.$port/redis.pid" \
			--logfile "$BENCH_DIR/cluster.$port/redis.log" --save '' --appendonly no \
			--cluster-enabled yes --cluster-config-file nodes.conf >/dev/null
		for _ in $(seq 100); do
			[ -s "$BENCH_DIR/cluster.$port/redis.pid" ] &&
				[ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break
			sleep 0.05
		done
		CLUSTER_PORTS+=("$port")
		CLUSTER_PIDS+=("$(cat "$BENCH_DIR/cluster.$port/redis.pid")")
	done
	redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") \
		--cluster-replicas 0 --cluster-yes >"$BENCH_DIR/cluster-create.log" 2>&1 ||
		{ cat "$BENCH_DIR/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
	for _ in $(seq 300); do
		local ok=1
		for port in "${CLUSTER_PORTS[@]}"; do
			redis-cli -p "$port" CLUSTER INFO | grep -q cluster_state:ok || ok=0
		done
		[ $ok = 1 ] && break
		sleep 0.1
	done
	[ $ok = 1 ] || die "the Redis Cluster did not reach cluster_state:ok"
	log "Redis Cluster of $n primaries on 127.0.0.1:${CLUSTER_PORTS[*]}"
}
