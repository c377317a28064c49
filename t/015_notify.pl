# entity_cache.notify: with applied (the default) the worker NOTIFYs each key
# once Redis applied it, so a listener that refills from Redis never reads
# the old value; commit notifies at the writer's commit; off sends nothing.
# The listener is t/notify_listener.c (libpq + hiredis), built here.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $bin = PostgreSQL::Test::Utils::tempdir('listener') . '/notify_listener';
my $incdir = `pg_config --includedir`;
my $libdir = `pg_config --libdir`;
chomp($incdir, $libdir);
system('gcc', '-O2', '-Wall', '-o', $bin, "$FindBin::RealBin/notify_listener.c",
	"-I$incdir", "-L$libdir", '-lpq', '-lhiredis', '-lpthread') == 0
  or BAIL_OUT('could not build t/notify_listener.c (libpq-dev, libhiredis-dev)');

my $redis = start_redis();
my $node = new_node('main', $redis);
my $conn = $node->connstr('postgres');

ok(wait_until(sub {
	$node->safe_psql('postgres', 'SELECT redis_connected FROM entity_cache.status') eq 't'
}), 'worker connected');
is($node->safe_psql('postgres', 'SHOW entity_cache.notify'), 'applied', 'applied is the default');

$node->safe_psql('postgres', q{
	INSERT INTO app.entity (code, label) SELECT 'r' || g, 'x' FROM generate_series(1, 600) g;
	CREATE TABLE app.child (id int PRIMARY KEY, name text);
	SELECT entity_cache.watch('app.child', 'child:{id}');
	INSERT INTO app.child VALUES (1, 'a');
});
ok(wait_for_sync($node), 'rows applied');

# A listener that refills from Redis on each notification, racing 500 writes
# (each key SET to "old" just before its UPDATE): it must never read "old".
my $race = `$bin "$conn" 127.0.0.1 $redis->{port} race 500`;
chomp $race;
is($?, 0, 'race listener ran');
like($race, qr/^notified 500 stale \d+$/, "every one of 500 keys notified ($race)");
like($race, qr/ stale 0$/, 'no notified key read back with its pre-write value');

# For comparison only (timing-dependent, not asserted): the writers'
# NOTIFY at commit reaches the listener before the worker cleaned Redis.
$ENV{PGOPTIONS} = '-c entity_cache.notify=commit';
my $race_commit = `$bin "$conn" 127.0.0.1 $redis->{port} race 500`;
delete $ENV{PGOPTIONS};
chomp $race_commit;
note("notify = commit, same race: $race_commit");
ok(wait_for_sync($node), 'commit race applied');

# start_listener(idle_ms, max): a listener started and ready; listened() collects it
sub start_listener
{
	my ($idle_ms, $max) = @_;
	my $out = '';
	my $h = IPC::Run::start(
		[ $bin, $conn, '127.0.0.1', $redis->{port}, 'listen', $idle_ms, $max ],
		'>', \$out, '2>', \my $err,
		IPC::Run::timeout(120));
	$h->pump until $out =~ /^ready\n/;
	return { h => $h, out => \$out };
}

# the payloads a listener printed after its "ready" line
sub payloads
{
	my ($l) = @_;
	my @lines = split /\n/, ${ $l->{out} };
	shift @lines;
	return @lines;
}

# what it heard so far, while it goes on listening
sub heard_so_far
{
	my ($l) = @_;
	$l->{h}->pump_nb;
	return payloads($l);
}

# what it heard until it stopped (idle_ms without a notification, or max)
sub listened
{
	my ($l) = @_;
	$l->{h}->finish;
	return payloads($l);
}

# Every write path is notified, after Redis, by the worker.  A key that
# could read as a pattern is sent with "key:"; patterns with "flush:".
my $l = start_listener(3000, 1000);
$node->safe_psql('postgres', $_) for (
	q{INSERT INTO app.entity (code) VALUES ('p1')},
	q{UPDATE app.entity SET label = 'u' WHERE code = 'r1'},
	q{UPDATE app.entity SET code = 'p2new' WHERE code = 'r2'},
	q{DELETE FROM app.entity WHERE code = 'r3'},
	q{INSERT INTO app.entity (code, label) VALUES ('r4', 'oc') ON CONFLICT (code) DO UPDATE SET label = excluded.label},
	q{MERGE INTO app.entity e USING (VALUES ('r5', 'm')) v(code, label) ON e.code = v.code WHEN MATCHED THEN UPDATE SET label = v.label},
	"COPY app.entity (code, label) FROM stdin;\np3\tcopied\n\\.\n",
	q{SELECT entity_cache.invalidate('r6')},
	q{SELECT entity_cache.invalidate_key('plain:key')},
	q{SELECT entity_cache.invalidate_key('flush:not-a-pattern')},
	q{SELECT entity_cache.invalidate_key('key:odd')},
	q{TRUNCATE app.child},
	q{SELECT entity_cache.flush_all()});
ok(wait_for_sync($node), 'write paths applied');
my %heard = map { $_ => 1 } listened($l);
for my $p ('entity:metadata:p1', 'entity:metadata:r1', 'entity:metadata:r2',
	'entity:metadata:p2new', 'entity:metadata:r3', 'entity:metadata:r4',
	'entity:metadata:r5', 'entity:metadata:p3', 'entity:metadata:r6',
	'plain:key', 'key:flush:not-a-pattern', 'key:key:odd',
	'flush:child:*', 'flush:entity:metadata:*')
{
	ok($heard{$p}, "applied: heard \"$p\"");
}

# A payload NOTIFY cannot carry is skipped and counted.
my $skipped = ec_status($node)->{notify_skipped};
$node->safe_psql('postgres', q{SELECT entity_cache.invalidate_key(repeat('x', 9000))});
ok(wait_for_sync($node), 'long key applied');
is(ec_status($node)->{notify_skipped}, $skipped + 1, 'a key too long for NOTIFY is counted in notify_skipped');

# Redis down: nothing is notified; everything is once it is back.
$l = start_listener(60000, 3);
stop_redis($redis);
$node->safe_psql('postgres',
	q{UPDATE app.entity SET label = 'down' WHERE code IN ('r10', 'r11', 'r12')});
sleep 3;
is(scalar(heard_so_far($l)), 0, 'Redis down: no notification');
is(ec_status($node)->{queue_depth}, '3', 'Redis down: the rows wait in the queue');

# commit: the writer notifies at its commit, Redis or not
my $heard = $node->safe_psql('postgres', q{LISTEN entity_cache; SET entity_cache.notify = commit;
	UPDATE app.entity SET label = 'c' WHERE code = 'r13';});
like($heard, qr/notification "entity_cache" with payload "entity:metadata:r13"/,
	'commit: the writer notifies at commit, while Redis is still down');
$heard = $node->safe_psql('postgres', q{LISTEN entity_cache; SET entity_cache.notify = commit;
	BEGIN; UPDATE app.entity SET label = 'c2' WHERE code = 'r13'; ROLLBACK;});
unlike($heard, qr/notification/, 'commit: no NOTIFY for a rolled-back change');
$heard = $node->safe_psql('postgres', q{LISTEN entity_cache;
	UPDATE app.entity SET label = 'a' WHERE code = 'r14';});
unlike($heard, qr/notification/, 'applied: the writer itself sends nothing');

restart_redis($redis);
my %back = map { $_ => 1 } listened($l);
ok($back{"entity:metadata:r$_"}, "Redis back: r$_ notified") for (10, 11, 12);
ok(wait_for_sync($node), 'Redis back: applied');

# off: nobody notifies
$node->safe_psql('postgres', q{ALTER SYSTEM SET entity_cache.notify = off; SELECT pg_reload_conf();});
ok(wait_until(sub { $node->safe_psql('postgres', 'SHOW entity_cache.notify') eq 'off' }), 'off: reloaded');
sleep 1;
$l = start_listener(2000, 1000);
$node->safe_psql('postgres', q{UPDATE app.entity SET label = 'off' WHERE code IN ('r20', 'r21')});
ok(wait_for_sync($node), 'off: applied');
is(scalar(listened($l)), 0, 'off: no notification');

# on is accepted and means applied
$node->safe_psql('postgres', q{ALTER SYSTEM SET entity_cache.notify = on; SELECT pg_reload_conf();});
ok(wait_until(sub { $node->safe_psql('postgres', 'SHOW entity_cache.notify') eq 'applied' }), 'on reads as applied');
sleep 1;
$l = start_listener(3000, 1);
$node->safe_psql('postgres', q{UPDATE app.entity SET label = 'on' WHERE code = 'r22'});
is_deeply([ listened($l) ], ['entity:metadata:r22'], 'on: the worker notifies');

# DROP and CREATE EXTENSION during a drain: the worker notices the dropped
# queue without an ERROR exit, and the first write after is applied.
my $pid = worker_pid($node);
$node->safe_psql('postgres', q{UPDATE app.entity SET label = label || '.'});
$node->safe_psql('postgres', 'DROP EXTENSION entity_cache CASCADE');
$node->safe_psql('postgres', 'CREATE EXTENSION entity_cache');
redis_cli($redis, 'SET', 'entity:metadata:r30', 'old');
$node->safe_psql('postgres', q{UPDATE app.entity SET label = 'after' WHERE code = 'r30'});
ok(wait_until(sub { redis_cli($redis, 'EXISTS', 'entity:metadata:r30') eq '0' }),
	'DROP/CREATE EXTENSION during a drain: the next write is applied');
is(worker_pid($node), $pid, 'DROP/CREATE EXTENSION: the same worker process goes on');
unlike(slurp_file($node->logfile), qr/could not open relation/, 'no "could not open relation" in the log');

# The NOTIFY queue filling up (a listener that never reads) is not tested:
# pg_notification_queue_usage() passes one half only after about 4 GB of
# notifications.

$node->stop;
done_testing();
