# The worker runs only on a primary.  A standby replays the queue but never
# talks to Redis; once promoted, its worker applies what the old primary
# left queued.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $redis = start_redis(persist => 1);
my $primary = new_node('primary', $redis, init => { allows_streaming => 1 });

my $glob = 'entity:metadata:f*';

# Redis connections other than the redis-cli asking
sub redis_clients
{
	my @lines = grep { !/\bcmd=client\b/ } split /\n/,
	  redis_cli($redis, 'CLIENT', 'LIST', 'TYPE', 'normal');
	return scalar @lines;
}

ok(wait_for_worker($primary), 'primary: worker connected');
$primary->safe_psql('postgres',
	q{INSERT INTO app.entity (code) SELECT 'f' || g FROM generate_series(1, 500) g});
ok(wait_for_sync($primary), 'primary: initial rows applied');

my $standby = new_standby($primary, $redis, 'standby');

is(worker_count($primary), '1', 'primary: one entity_cache worker');
# a wrongly registered worker (e.g. BgWorkerStart_ConsistentState) would
# show up within this time, or come and go while it fails and restarts
ok(never_within(sub { worker_count($standby) ne '0' }, 3),
	'standby: no entity_cache worker in pg_stat_activity');
ok(!$standby->log_contains(qr/entity_cache worker started/), 'standby: the worker never started');
my $st = ec_status($standby);
is($st->{worker_pid}, '', 'standby: status shows no worker');
is($st->{redis_connected}, 'f', 'standby: status not connected');
is(redis_clients(), 1, 'only the primary is connected to Redis');

# the primary queues while Redis is down
redis_fill($redis, 'entity:metadata:f', 1, 500, 'stale');
redis_cli($redis, 'SET', 'unrelated:key', 'keep');
stop_redis($redis);

$primary->safe_psql('postgres', q{UPDATE app.entity SET label = 'u' WHERE code IN (SELECT 'f' || g FROM generate_series(1, 300) g)});
$primary->safe_psql('postgres', "UPDATE app.entity SET label = 'x' WHERE code = 'f$_'") for (301 .. 305);
$primary->safe_psql('postgres', q{DELETE FROM app.entity WHERE code IN ('f306', 'f307', 'f308', 'f309', 'f310')});
is(ec_status($primary)->{queue_depth}, '310', 'primary: 310 keys queued while Redis is down');

$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
is(ec_status($standby)->{queue_depth}, '310', 'standby: the queue is replicated');
is(worker_count($standby), '0', 'standby: still no worker');
ok(!$standby->log_contains(qr/entity_cache worker started/), 'standby: the worker still never started');

$primary->stop;
restart_redis($redis);
is(redis_cli($redis, 'GET', 'unrelated:key'), 'keep', 'Redis restarted with its data from disk');
is(redis_count($redis, $glob), '500', 'the stale keys are back');

$standby->promote;
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 'standby promoted');
ok(wait_until(sub { worker_count($standby) eq '1' }, 30), 'promoted: the worker starts');
ok(wait_for_sync($standby, 30), 'promoted: sync');
is(redis_count($redis, $glob), '190', 'promoted: the 310 keys the old primary queued are gone, the others kept');
is(redis_exist_count($redis, 'entity:metadata:f', 310),
	'0', 'promoted: none of the queued keys is left');
$st = ec_status($standby);
is($st->{queue_depth}, '0', 'promoted: queue empty');
is($st->{redis_connected}, 't', 'promoted: connected');

# and it captures and applies its own writes
$standby->safe_psql('postgres', q{UPDATE app.entity SET label = 'new' WHERE code = 'f400'});
ok(wait_for_sync($standby), 'promoted: sync of a new write');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:f400'), '0', 'promoted: a new write is applied');
is(redis_count($redis, $glob), '189', 'promoted: nothing else touched');

$standby->stop;
done_testing();
