# Keys for every table shape and every session (issue 9), end to end with a
# real Redis: canonical key text whatever the writer's settings; refresh
# lookups that find rows by typed values, and one key that cannot be
# refreshed deleted on its own; writes made directly to partitions; a
# database no worker serves; DROP/CREATE EXTENSION cycles under writers.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use EntityCacheTest;

my $redis = start_redis(persist => 1);
my $node = new_node('keys', $redis, conf => "entity_cache.mode = 'refresh'\n");
ok(wait_until(sub { ec_status($node)->{redis_connected} eq 't' }), 'worker connected');

$node->safe_psql('postgres', q{
	CREATE TABLE app.ev (at timestamptz PRIMARY KEY, f float8, label text);
	SELECT entity_cache.watch('app.ev', 'ev:{at}');
	SELECT entity_cache.watch('app.ev', 'evf:{f}');
	CREATE TABLE app.gone (id int PRIMARY KEY, label text);
	SELECT entity_cache.watch('app.gone', 'gone:{id}');
	CREATE TABLE app.pt (id int, region text, label text) PARTITION BY LIST (region);
	CREATE TABLE app.pt_us PARTITION OF app.pt FOR VALUES IN ('us');
	SELECT entity_cache.watch('app.pt', 'pt:{id}');
	CREATE TABLE app.pt_eu PARTITION OF app.pt FOR VALUES IN ('eu');
});

# canonical key text: a writer in Tokyo with SQL dates and 3 fewer float
# digits; the key is the ISO/UTC text, and refresh finds the row by it
$node->safe_psql('postgres', q{
	SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'; SET extra_float_digits = -3;
	INSERT INTO app.ev VALUES ('2024-03-15 19:00:00+09', 0.1, 'tokyo');
});
ok(wait_for_sync($node), 'canonical: sync');
my $json = $node->safe_psql('postgres',
	q{SELECT row_to_json(e)::text FROM app.ev e WHERE label = 'tokyo'});
is(redis_cli($redis, 'GET', 'ev:2024-03-15 10:00:00+00'), $json,
	'a timestamptz key is the UTC ISO text, refreshed with the row');
is(redis_cli($redis, 'GET', 'evf:0.1'), $json, 'a float8 key is the shortest exact text');
# the same row changed from a session with other settings: the same key
redis_cli($redis, 'SET', 'ev:2024-03-15 10:00:00+00', 'stale');
$node->safe_psql('postgres', q{
	SET TimeZone = 'America/Los_Angeles'; SET DateStyle = 'German';
	UPDATE app.ev SET label = 'la' WHERE f = 0.1;
});
ok(wait_for_sync($node), 'canonical update: sync');
like(redis_cli($redis, 'GET', 'ev:2024-03-15 10:00:00+00'), qr/"label":"la"/,
	'a write from another time zone refreshes the same key');
is(ec_status($node)->{refresh_failed}, '0', 'no refresh failed so far');

# partitions: a direct write to a partition refreshes the key, a later
# partition too, and a row deleted through a partition deletes it
$node->safe_psql('postgres', q{INSERT INTO app.pt VALUES (1, 'us', 'a'), (2, 'eu', 'b')});
ok(wait_for_sync($node), 'partitions: sync');
$node->safe_psql('postgres', q{UPDATE app.pt_us SET label = 'direct' WHERE id = 1});
$node->safe_psql('postgres', q{UPDATE app.pt_eu SET label = 'later' WHERE id = 2});
ok(wait_for_sync($node), 'partition writes: sync');
like(redis_cli($redis, 'GET', 'pt:1'), qr/"label":"direct"/, 'direct UPDATE of a partition refreshes the key');
like(redis_cli($redis, 'GET', 'pt:2'), qr/"label":"later"/, 'a partition created after watch() too');
$node->safe_psql('postgres', q{DELETE FROM app.pt_us WHERE id = 1});
ok(wait_for_sync($node), 'partition delete: sync');
is(redis_cli($redis, 'EXISTS', 'pt:1'), '0', 'DELETE from a partition deletes the key');

# One batch holding keys that can be refreshed and keys that cannot: a
# table dropped with its keys still queued, a value that does not read
# back.  Redis is stopped so that everything waits in the queue and the
# worker takes it as one batch once Redis is back.
redis_cli($redis, 'SET', $_, 'stale') for ('gone:1', 'ev:bad', 'entity:metadata:ok1');
stop_redis($redis);
$node->safe_psql('postgres', q{
	INSERT INTO app.gone VALUES (1, 'x');
	INSERT INTO app.entity (code, label) VALUES ('ok1', 'fine'), ('ok2', 'fine too');
	INSERT INTO entity_cache.queue (op, key, relid, template, vals)
	VALUES ('k', 'ev:bad', 'app.ev'::regclass, 'ev:{at}', '{not-a-time}');
	DROP TABLE app.gone;
});
my $log_offset = -s $node->logfile;
restart_redis($redis);
ok(wait_for_sync($node), 'mixed batch: sync');
like(redis_cli($redis, 'GET', 'entity:metadata:ok1'), qr/"label":"fine"/,
	'the keys that can be refreshed are refreshed');
like(redis_cli($redis, 'GET', 'entity:metadata:ok2'), qr/"label":"fine too"/, '... all of them');
is(redis_cli($redis, 'EXISTS', 'gone:1'), '0', 'the key of a dropped table is deleted');
is(redis_cli($redis, 'EXISTS', 'ev:bad'), '0', 'the key whose value does not read back is deleted');
is(ec_status($node)->{refresh_failed}, '2', 'status.refresh_failed counts both');
my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/cannot refresh key "gone:1", deleting it instead/, 'a warning names the key of the dropped table');
like($log, qr/cannot refresh key "ev:bad", deleting it instead/, 'a warning names the unreadable key');

# a database no worker serves: CREATE EXTENSION warns, status says so,
# sync() does not wait
$node->safe_psql('postgres', 'CREATE DATABASE other');
my ($ret, $out, $err) = $node->psql('other', q{
	CREATE SCHEMA app;
	CREATE TABLE app.entity (code text PRIMARY KEY, label text);
	CREATE EXTENSION entity_cache;
});
is($ret, 0, 'CREATE EXTENSION in another database succeeds');
like($err, qr/WARNING:  entity_cache: no worker serves this database: entity_cache.database is "postgres"/,
	'... with a warning naming entity_cache.database');
is($node->safe_psql('other', q{SELECT coalesce(worker_pid::text, 'none') || ' / ' || worker_note
	FROM entity_cache.status}),
	'none / no worker serves this database: entity_cache.database is "postgres"',
	'status there shows no worker and why');
$node->safe_psql('other', q{INSERT INTO app.entity VALUES ('o1', 'x')});
my $t0 = time();
is($node->safe_psql('other', q{SELECT entity_cache.sync('60 s')}), 'f', 'sync() there: false');
ok(time() - $t0 < 30, 'sync() there returns at once');
ok(wait_for_sync($node), 'the served database still syncs');

# commits there do not wake the worker: its transactions (one a second
# while idle, one per wake-up otherwise) do not follow 300 commits there
sub worker_db_commits
{
	sleep 2;    # let the statistics of the last second arrive
	return $node->safe_psql('other',
		q{SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'});
}
my $c0 = worker_db_commits();
$node->safe_psql('other', join('', map { "INSERT INTO app.entity VALUES ('n$_', 'x');\n" } 1 .. 300));
my $c1 = worker_db_commits();
ok($c1 - $c0 < 60, 'commits in an unserved database do not wake the worker (' . ($c1 - $c0)
	. ' transactions in the served database meanwhile)');
# the same 300 commits in the served database do wake it, each or in groups
$node->safe_psql('postgres', join('', map { "INSERT INTO app.entity VALUES ('n$_', 'x');\n" } 1 .. 300));
my $c2 = worker_db_commits();
ok($c2 - $c1 > $c1 - $c0, "... as commits in the served database do (" . ($c2 - $c1) . ')');

# pg_dump and restore of a database with a watched partitioned table: the
# partitions' triggers come back from the dump, without a collision with
# the event trigger, and writes to a partition are captured there
my $dump = PostgreSQL::Test::Utils::tempdir() . '/dump.sql';
$node->command_ok([ 'pg_dump', '-h', $node->host, '-p', $node->port, '-f', $dump, 'postgres' ],
	'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
($ret, $out, $err) = $node->psql('restored', undef,
	extra_params => [ '-v', 'ON_ERROR_STOP=1', '-f', $dump ]);
is($ret, 0, 'the dump restores without an error') or diag($err);
is($node->safe_psql('restored', q{SELECT string_agg(tgrelid::regclass || ' ' || tgname, ', ' ORDER BY 1)
	FROM (SELECT tgrelid::regclass::text AS r, * FROM pg_trigger
	      WHERE tgname LIKE 'entity_cache_part_insert') t}),
	'app.pt_eu entity_cache_part_insert, app.pt_us entity_cache_part_insert',
	'the restored partitions carry their capture triggers');
$node->safe_psql('restored', q{INSERT INTO app.pt_us VALUES (99, 'us', 'r')});
is($node->safe_psql('restored', q{SELECT string_agg(key, ',') FROM entity_cache.queue}), 'pt:99',
	'a write to a restored partition is queued');

# a transaction that read the watched view, then writes a watched table
# while a DROP EXTENSION is waiting for that view: the DROP waits, the
# write goes through, nobody deadlocks
{
	my $reader = $node->background_psql('postgres', on_error_stop => 0);
	$reader->query_safe('BEGIN');
	$reader->query_safe('SELECT count(*) FROM entity_cache.watched');
	my $dropper = $node->background_psql('postgres', on_error_stop => 0);
	$dropper->query_until(qr/dropping/, "\\echo dropping\nDROP EXTENSION entity_cache CASCADE;\n");
	ok(wait_until(sub { $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DROP EXTENSION%'}) eq '1' }),
		'the DROP waits for the reader');
	my (undef, $failed) = $reader->query(q{UPDATE app.entity SET label = 'v' WHERE code = 'ok1'});
	is($failed, 0, 'the reader then writes a watched table') or diag($reader->{stderr});
	(undef, $failed) = $reader->query('COMMIT');
	is($failed, 0, '... and commits');
	$reader->quit;
	$dropper->quit;
	like($dropper->{stderr}, qr/drop cascades/, 'the DROP then completes') or diag($dropper->{stderr});
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_extension WHERE extname = 'entity_cache'}),
		'0', 'the extension is gone');
	unlike(slurp_file($node->logfile), qr/deadlock detected/, 'no deadlock');
	$node->safe_psql('postgres', q{CREATE EXTENSION entity_cache; SELECT entity_cache.watch('app.pt', 'pt:{id}')});
}

# DROP/CREATE EXTENSION cycles while writers change two watched tables in
# both orders (and the worker refreshes them): no deadlock, no worker ERROR
$node->safe_psql('postgres', q{
	INSERT INTO app.entity (code, label) SELECT 'w' || g, 'w' FROM generate_series(1, 20) g;
	INSERT INTO app.pt SELECT g, 'us', 'w' FROM generate_series(1, 20) g;
});
my $dir = PostgreSQL::Test::Utils::tempdir();
# each script its own rows, so that the writers cannot deadlock on rows
append_to_file("$dir/a.sql", q{\set id random(1, 10)
BEGIN;
UPDATE app.entity SET label = 'a' WHERE code = 'w' || :id;
UPDATE app.pt SET label = 'a' WHERE id = :id;
COMMIT;
});
append_to_file("$dir/b.sql", q{\set id random(11, 20)
BEGIN;
UPDATE app.pt SET label = 'b' WHERE id = :id;
UPDATE app.entity SET label = 'b' WHERE code = 'w' || :id;
COMMIT;
});
$log_offset = -s $node->logfile;
my ($bout, $berr) = ('', '');
my $bench = IPC::Run::start([ 'pgbench', '-n', '-h', $node->host, '-p', $node->port,
	'-c', '4', '-j', '2', '-T', '40', '-f', "$dir/a.sql", '-f', "$dir/b.sql", 'postgres' ],
	'>', \$bout, '2>', \$berr);
sleep 2;
my $cycles_ok = 0;
for my $i (1 .. 8)
{
	my ($r1, undef, $e1) = $node->psql('postgres', 'DROP EXTENSION entity_cache CASCADE');
	my ($r2, undef, $e2) = $node->psql('postgres', q{
		CREATE EXTENSION entity_cache;
		SELECT entity_cache.watch('app.pt', 'pt:{id}');
	});
	diag("cycle $i: $e1 $e2") if $r1 || $r2;
	$cycles_ok++ if $r1 == 0 && $r2 == 0;
}
is($cycles_ok, 8, 'eight DROP/CREATE EXTENSION cycles under writers all succeed');
ok($bench->finish, 'the writers never failed') or diag($berr);
like($bout, qr/number of transactions actually processed: [1-9]/, 'the writers wrote') or diag($bout);
unlike($berr, qr/deadlock/, 'no writer saw a deadlock');
$log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/deadlock detected/, 'no deadlock in the server log');
unlike($log, qr/entity_cache worker.*(ERROR|FATAL)/, 'the worker never failed');
unlike($log, qr/"entity_cache worker" \(PID \d+\) exited/, 'the worker never exited');
# after the last cycle, writes are captured and applied again
redis_cli($redis, 'SET', 'pt:3', 'stale');
$node->safe_psql('postgres', q{UPDATE app.pt_us SET label = 'after' WHERE id = 3});
ok(wait_for_sync($node), 'after the cycles: sync');
like(redis_cli($redis, 'GET', 'pt:3'), qr/"label":"after"/, 'after the cycles, partitions are watched again');

$node->stop;
done_testing();
