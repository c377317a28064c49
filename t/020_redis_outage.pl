# Redis down, restarted, stalled (SIGSTOP) or read-only: writers never fail
# and never wait on Redis, the queue holds every change, status tells what
# is wrong, and once Redis is back every queued key is applied.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use EntityCacheTest;

# entity_cache.redis_timeout is 1000 ms (new_node)
my $timeout_ms = 1000;
# a write that waited on Redis would take at least the timeout
my $max_write_ms = 500;

my $redis = start_redis(persist => 1);
my $node = new_node('outage', $redis);
$node->safe_psql('postgres',
	'CREATE TABLE public.write_runs (run text, failures int, max_ms float8, total_ms float8)');

# $n single-row UPDATEs of e$from.., each its own transaction, from one
# session; returns (failures, slowest write in ms, total ms)
sub timed_writes
{
	my ($run, $from, $to) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', qq{
DO \$\$
DECLARE
	t0 timestamptz;
	started timestamptz := clock_timestamp();
	slowest float8 := 0;
	fails int := 0;
BEGIN
	FOR i IN $from..$to LOOP
		t0 := clock_timestamp();
		BEGIN
			UPDATE app.entity SET label = 'v' || i, modified_ts = now() WHERE code = 'e' || i;
			IF NOT FOUND THEN fails := fails + 1; END IF;
		EXCEPTION WHEN others THEN
			fails := fails + 1;
		END;
		COMMIT;
		slowest := greatest(slowest, extract(epoch FROM clock_timestamp() - t0) * 1000);
	END LOOP;
	INSERT INTO public.write_runs
	VALUES ('$run', fails, slowest, extract(epoch FROM clock_timestamp() - started) * 1000);
END
\$\$;});
	is($ret, 0, "$run: the write session ran to its end") or diag($err);
	my $res = $node->safe_psql('postgres',
		"SELECT failures, round(max_ms::numeric, 1), round(total_ms::numeric) FROM public.write_runs WHERE run = '$run'");
	return split /\|/, $res;
}

ok(wait_for_worker($node), 'worker connected');
my $pid = ec_status($node)->{worker_pid};
ok($pid, "worker pid $pid");

$node->safe_psql('postgres',
	q{INSERT INTO app.entity (code, label) SELECT 'e' || g, 'L' || g FROM generate_series(1, 1000) g});
ok(wait_for_sync($node), 'initial rows applied');

#
# 1. Redis stopped: 1,000 writes, then Redis back with its stale data
#
redis_fill($redis, 'entity:metadata:e', 1, 1000, 'stale');
redis_cli($redis, 'SET', 'unrelated:key', 'keep');
redis_cli($redis, 'SET', 'entity:metadata:untouched', 'keep');
is(redis_count($redis, 'entity:metadata:e*'), '1000', '1,000 keys cached before the outage');

stop_redis($redis);
my $errors_before = ec_status($node)->{errors_total};
my $log_offset = -s $node->logfile;

my ($fails, $slowest, $total) = timed_writes('outage', 1, 1000);
is($fails, '0', 'Redis down: all 1,000 single-row writes succeed');
cmp_ok($slowest, '<', $max_write_ms,
	"Redis down: slowest write ${slowest} ms, total ${total} ms (Redis timeout $timeout_ms ms)");

ok(wait_until(sub { ec_status($node)->{redis_connected} eq 'f' }, 10),
	'Redis down: status says not connected');
# the first failure is the lost connection, the next ones are refused connects
my $st;
ok(wait_until(sub {
	$st = ec_status($node);
	$st->{last_error} =~ /could not connect/
}, 5), 'Redis down: the worker tries to reconnect');
is($st->{queue_depth}, '1000', 'Redis down: one queue row per changed key');
isnt($st->{oldest_pending_age}, '', "Redis down: oldest_pending_age is set ($st->{oldest_pending_age})");
like($st->{last_error}, qr/could not connect to Redis at 127\.0\.0\.1:$redis->{port}.*refused/i,
	"Redis down: last_error names the connection ($st->{last_error})");
isnt($st->{last_error_at}, '', 'Redis down: last_error_at is set');
cmp_ok($st->{errors_total}, '>', $errors_before, 'Redis down: errors_total grows');

# capped exponential backoff: a burst of commits must not turn into a burst
# of connection attempts, and a quiet outage costs a few attempts a second
my $errors_during_writes = $st->{errors_total} - $errors_before;
cmp_ok($errors_during_writes, '<=', 15,
	"Redis down: $errors_during_writes connection attempts during 1,000 commits (backoff honoured)");
my $e0 = ec_status($node)->{errors_total};
sleep 3;
my $e1 = ec_status($node)->{errors_total};
cmp_ok($e1 - $e0, '<=', 8, 'Redis down: at most a few reconnection attempts in 3 s (' . ($e1 - $e0) . ')');
# the backoff is capped at 5 s
ok(wait_until(sub { ec_status($node)->{errors_total} > $e1 }, 7),
	'Redis down: the worker keeps retrying');

my $log = slurp_file($node->logfile, $log_offset);
my $nlogged = () = $log =~ /entity_cache: could not connect to Redis/g;
cmp_ok($nlogged, '<=', 2, "Redis down: repeated connection errors are not flooding the log ($nlogged lines)");
is(ec_status($node)->{worker_pid}, $pid, 'Redis down: worker still the same process');

# Redis comes back from its append-only file, the 1,000 stale values with it
restart_redis($redis);
is(redis_cli($redis, 'GET', 'unrelated:key'), 'keep', 'Redis restarted with its data from disk');
ok(wait_for_sync($node, 30), 'Redis back: sync');
is(redis_count($redis, 'entity:metadata:e*'), '0', 'Redis back: every one of the 1,000 stale keys is gone');
is(redis_cli($redis, 'GET', 'entity:metadata:untouched'), 'keep', 'Redis back: unchanged keys kept');
$st = ec_status($node);
is($st->{queue_depth}, '0', 'Redis back: queue empty');
is($st->{redis_connected}, 't', 'Redis back: status connected');
is($st->{worker_pid}, $pid, 'Redis back: same worker process');

#
# 2. network stall: Redis stops answering (SIGSTOP) past redis_timeout
#
redis_fill($redis, 'entity:metadata:e', 1, 1000, 'stale');
ok(wait_for_sync($node), 'stall: idle and connected before the stall');
is(ec_status($node)->{redis_connected}, 't', 'stall: connected before the stall');
my $stall_start = $node->safe_psql('postgres', 'SELECT now()');
my $stall_t0 = time();
$errors_before = ec_status($node)->{errors_total};

kill 'STOP', $redis->{pid};
($fails, $slowest, $total) = timed_writes('stall', 1, 200);
is($fails, '0', 'stall: all 200 writes succeed');
cmp_ok($slowest, '<', $max_write_ms,
	"stall: slowest write ${slowest} ms, total ${total} ms (Redis timeout $timeout_ms ms)");

# the worker gives up on the stalled command after the timeout, not never
ok(wait_until(sub {
	$node->safe_psql('postgres',
		"SELECT errors_total > $errors_before AND last_error_at >= '$stall_start' FROM entity_cache.status") eq 't'
}, 3 * $timeout_ms / 1000 + 2), 'stall: the worker times out and records an error');
# stay stalled for well past the timeout
my $left = 2.5 * $timeout_ms / 1000 - (time() - $stall_t0);
usleep(int($left * 1e6)) if $left > 0;
$st = ec_status($node);
like($st->{last_error}, qr/temporarily unavailable|timed out|timeout/i,
	"stall: last_error says the Redis call timed out ($st->{last_error})");
is($st->{redis_connected}, 'f', 'stall: status says not connected');
is($st->{queue_depth}, '200', 'stall: nothing removed from the queue without an acknowledgement');
is($st->{worker_pid}, $pid, 'stall: same worker process');
my $t_sync = time();
is($node->safe_psql('postgres', "SELECT entity_cache.sync('300 ms')"), 'f',
	'stall: sync returns false on timeout');
cmp_ok(time() - $t_sync, '<', 0.3 + $timeout_ms / 1000, 'stall: sync is bounded by its own timeout');

kill 'CONT', $redis->{pid};
ok(wait_for_sync($node, 30), 'stall over: sync');
is(redis_count($redis, 'entity:metadata:e*'), '800', 'stall over: the 200 written keys are gone, the others kept');
is(redis_exist_count($redis, 'entity:metadata:e', 200),
	'0', 'stall over: none of the 200 keys is left');
$st = ec_status($node);
is($st->{queue_depth}, '0', 'stall over: queue empty');
is($st->{redis_connected}, 't', 'stall over: connected');
is($st->{worker_pid}, $pid, 'stall over: same worker process');

#
# 3. Redis up but refusing writes (a read-only replica after a Redis
#    failover): error replies keep the rows queued until writes work again
#
redis_fill($redis, 'entity:metadata:e', 1, 1000, 'stale');
ok(wait_for_sync($node), 'read-only: idle before');
redis_cli($redis, 'REPLICAOF', '127.0.0.1', '1');
$errors_before = ec_status($node)->{errors_total};
($fails, $slowest, $total) = timed_writes('readonly', 1, 50);
is($fails, '0', 'read-only: all 50 writes succeed');
ok(wait_until(sub {
	$st = ec_status($node);
	$st->{errors_total} > $errors_before && $st->{last_error} =~ /READONLY/
}, 10), "read-only: the error reply is recorded ($st->{last_error})");
is($st->{queue_depth}, '50', 'read-only: nothing removed from the queue on an error reply');
is(redis_count($redis, 'entity:metadata:e*'), '1000', 'read-only: nothing applied');
is($node->safe_psql('postgres', "SELECT entity_cache.sync('300 ms')"), 'f',
	'read-only: sync returns false');
redis_cli($redis, 'REPLICAOF', 'NO', 'ONE');
ok(wait_for_sync($node, 15), 'writable again: sync');
is(redis_count($redis, 'entity:metadata:e*'), '950', 'writable again: the 50 written keys are gone');
$st = ec_status($node);
is($st->{queue_depth}, '0', 'writable again: queue empty');
is($st->{redis_connected}, 't', 'writable again: connected');
is($st->{worker_pid}, $pid, 'writable again: same worker process');

$node->stop;
done_testing();
