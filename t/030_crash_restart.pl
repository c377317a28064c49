# The worker killed with SIGKILL in the middle of a large backlog (the
# postmaster then restarts the whole cluster), and the server stopped in
# immediate mode with a backlog: every committed change still reaches Redis.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use EntityCacheTest;

my $nkeys = 50_000;
my $redis = start_redis(persist => 1);
# small batches: the drain of the backlog takes long enough to be interrupted
# the test framework turns restart_after_crash off; production default is on
my $node = new_node('crash', $redis,
	conf => "entity_cache.batch_size = 100\nrestart_after_crash = on\n");

my $glob = 'entity:metadata:k*';

ok(wait_for_worker($node), 'worker connected');

#
# 1. kill -9 of the worker while it drains a 50,000-key backlog
#
redis_fill($redis, 'entity:metadata:k', 1, $nkeys, 'stale');
redis_cli($redis, 'SET', 'unrelated:key', 'keep');
is(redis_count($redis, $glob), $nkeys, "$nkeys stale keys cached");
stop_redis($redis);

$node->safe_psql('postgres',
	"INSERT INTO app.entity (code, label) SELECT 'k' || g, 'L' || g FROM generate_series(1, $nkeys) g");
is(ec_status($node)->{queue_depth}, $nkeys, "Redis down: $nkeys keys queued by one INSERT");

restart_redis($redis);
is(redis_cli($redis, 'GET', 'unrelated:key'), 'keep', 'Redis restarted with its data from disk');

# wait until the drain is under way, then kill the worker
my $depth;
ok(wait_until(sub {
	$depth = ec_status($node)->{queue_depth};
	$depth < $nkeys - 2_000
}, 30), 'the worker drains the backlog');
# freeze Redis so that the drain cannot finish between the depth read and
# the kill (a fast drain could otherwise empty the queue in between)
kill 'STOP', $redis->{pid};
$depth = ec_status($node)->{queue_depth};
my $pid = worker_pid($node);
ok($pid, "worker pid $pid");
my $log_offset = -s $node->logfile;
kill 'KILL', $pid;
kill 'CONT', $redis->{pid};
note "killed the worker with $depth rows still queued";
cmp_ok($depth, '>', 5_000, "killed in the middle of the drain ($depth rows left)");

$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
pass('the postmaster restarts the cluster after the worker crash');
my $newpid;
ok(wait_until(sub {
	$newpid = worker_pid($node);
	$newpid ne '' && $newpid ne $pid
}, 60), 'after crash recovery a new worker runs');
note "new worker pid $newpid";

ok(wait_for_sync($node, 60), 'after the crash: sync');
is(redis_count($redis, $glob), '0', "after the crash: every one of the $nkeys keys is gone");
my $st = ec_status($node);
is($st->{queue_depth}, '0', 'after the crash: queue empty');
is($st->{redis_connected}, 't', 'after the crash: connected');
cmp_ok($st->{applied_total}, '>', 0, "the new worker applied what was left ($st->{applied_total} rows)");
is(redis_cli($redis, 'GET', 'unrelated:key'), 'keep', 'after the crash: unrelated key kept');

#
# 2. the worker terminated (SIGTERM, pg_terminate_backend): the postmaster
#    starts it again, no cluster restart
#
my $postmaster_start = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
$pid = worker_pid($node);
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't', 'worker terminated');
ok(wait_until(sub { my $p = worker_pid($node); $p ne '' && $p ne $pid }, 15),
	'terminated: the worker is started again');
ok(wait_until(sub { ec_status($node)->{redis_connected} eq 't' }, 15), 'terminated: new worker connected');
redis_cli($redis, 'SET', 'entity:metadata:k1', 'stale');
$node->safe_psql('postgres', q{UPDATE app.entity SET label = 't' WHERE code = 'k1'});
ok(wait_for_sync($node), 'terminated: sync');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:k1'), '0', 'terminated: the new worker applies writes');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $postmaster_start,
	'terminated: no cluster restart');

#
# 3. a backlog, then an immediate shutdown (no checkpoint), then a start
#
redis_fill($redis, 'entity:metadata:k', 1, $nkeys, 'stale');
is(redis_count($redis, $glob), $nkeys, "$nkeys stale keys cached again");
stop_redis($redis);

$node->safe_psql('postgres', q{UPDATE app.entity SET label = 'u', modified_ts = now()});
# and a few small transactions on top of the big one
$node->safe_psql('postgres', "UPDATE app.entity SET label = 'v' WHERE code = 'k$_'") for (1 .. 5);
is(ec_status($node)->{queue_depth}, $nkeys + 5, 'Redis down: backlog queued');

$node->stop('immediate');
$node->start;
$st = ec_status($node);
is($st->{queue_depth}, $nkeys + 5, 'after an immediate shutdown the backlog is still queued');
ok(wait_until(sub { worker_pid($node) ne '' }, 30), 'worker started with the server');
ok(wait_until(sub { ec_status($node)->{last_error} =~ /could not connect/ }, 30),
	'worker reports that Redis is down');
is($node->safe_psql('postgres', "SELECT entity_cache.sync('200 ms')"), 'f',
	'sync times out while Redis is down');

restart_redis($redis);
is(redis_cli($redis, 'GET', 'unrelated:key'), 'keep', 'Redis restarted with its data from disk');
ok(wait_for_sync($node, 60), 'after the restart: sync');
is(redis_count($redis, $glob), '0', "after the restart: every one of the $nkeys keys is gone");
$st = ec_status($node);
is($st->{queue_depth}, '0', 'after the restart: queue empty');
is($st->{redis_connected}, 't', 'after the restart: connected');

$node->stop;
done_testing();
