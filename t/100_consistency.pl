# Consistency: a racing cache-aside reader's stale SET is undone by the
# redelete; verify() finds stale and orphan keys, and repairs them, in
# batches with a snapshot each; warm() writes every row; the README's value
# function gives, byte for byte, what a node-postgres application caches.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time usleep);
use EntityCacheTest;

my $redis = start_redis();
my $node = new_node('main', $redis, redelete => 1);
my $db = 'postgres';

sub psql { return $node->safe_psql($db, $_[0]); }

sub reload_settings
{
	my ($settings) = @_;
	reload_with($node, join('; ', map { "ALTER SYSTEM SET $_" } @$settings));
	# the worker reads the file on its next loop; wait until a backend sees it
	usleep(300_000);
}

# everything applied, and applied again: nothing pending may overwrite
# what a test plants next
sub settle
{
	return wait_for_sync($node, 180)
	  && wait_until(sub { ec_status($node)->{redelete_pending} eq '0' }, 30);
}

# The README's example value function, taken from the README itself.
my $readme = slurp_file("$FindBin::RealBin/../README.md");
my ($entity_json) = $readme =~ /<!-- entity_json:start -->\s*```sql\n(.*?)```\s*<!-- entity_json:end -->/s;
ok(defined $entity_json, 'the README has the example value function');
psql($entity_json);

ok(wait_until(sub { psql('SELECT redis_connected FROM entity_cache.status') eq 't' }),
	'worker connected');
is(psql("SHOW entity_cache.redelete_delay"), '100ms', 'redelete is on by default (100 ms)');

# ---------------------------------------------------------------------
# the staged race
# ---------------------------------------------------------------------

# A minimal RESP client on one connection: the staged reader must SET
# within milliseconds of the worker's application, as a real racing reader
# does, which a redis-cli process per command cannot.
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $redis->{port})
  or die "connect to redis: $!";
$sock->autoflush(1);

sub resp
{
	my (@args) = @_;
	$sock->print('*' . scalar(@args) . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args));
	my $line = <$sock>;
	$line =~ s/\r\n$//;
	return $line if $line =~ /^[+:-]/;
	die "unexpected reply $line" unless $line =~ /^\$(-?\d+)$/;
	return undef if $1 < 0;
	my $data = '';
	read($sock, $data, $1 + 2) == $1 + 2 or die 'short read';
	return substr($data, 0, $1);
}

# A reader read the row (old); the write commits and is applied (the key is
# gone, or rewritten in refresh mode); within a millisecond or two the
# reader SETs what it read.  Returns how many ms after that SET the key was
# gone (delete) or current (refresh), or undef if it still held the old
# value after $give_up ms.
sub staged_race
{
	my ($code, $want, $give_up) = @_;
	my $key = "entity:metadata:$code";
	my $old = psql("SELECT app.entity_json(e) FROM app.entity e WHERE code = '$code'");
	resp('SET', $key, 'before');
	my ($o, $e) = ('', '');
	my $writer = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr($db), '-c',
		"UPDATE app.entity SET label = label || '+' WHERE code = '$code'" ], '>', \$o, '2>', \$e);
	my $t = time();
	while ((resp('GET', $key) // '') eq 'before')
	{
		die 'the write was never applied' if time() - $t > 30;
		usleep(500);
	}
	my $t0 = time();
	resp('SET', $key, $old, 'EX', '300');
	$writer->finish;
	my $new = psql("SELECT app.entity_json(e) FROM app.entity e WHERE code = '$code'");
	while ((time() - $t0) * 1000 < $give_up)
	{
		my $v = resp('GET', $key);
		my $done = $want eq 'gone' ? !defined $v : defined $v && $v eq $new;
		return (time() - $t0) * 1000 if $done;
		die "unexpected value $v" if defined $v && $v ne $old && $v ne $new;
		usleep(2_000);
	}
	return undef;
}

psql(q{INSERT INTO app.entity (code, label) VALUES ('race', 'r')});
psql(q{SELECT entity_cache.unwatch('app.entity');
	SELECT entity_cache.watch('app.entity', 'entity:metadata:{code}', 'app.entity_json(app.entity)')});

# without redelete the stale value stays: the test can fail
reload_settings(["entity_cache.redelete_delay = 0"]);
is(staged_race('race', 'gone', 1500), undef,
	'redelete off: the reader\'s stale SET survives (1.5 s)');

is(psql("SHOW entity_cache.redelete_steps"), '4', 'four applications within the delay by default');

# A fill that lands a few ms after the application is undone by the first
# step (delay / 2^(steps - 1)); with one step, only at the delay.
for my $mode ('delete', 'refresh')
{
	my $want = $mode eq 'delete' ? 'gone' : 'current';
	for my $setting ([ 100, 4 ], [ 1000, 4 ], [ 1000, 1 ])
	{
		my ($delay, $steps) = @$setting;
		my $first = $delay / 2**($steps - 1);
		my $what = "$mode mode, redelete_delay $delay, redelete_steps $steps";
		reload_settings([ "entity_cache.mode = '$mode'", "entity_cache.redelete_delay = $delay",
			"entity_cache.redelete_steps = $steps" ]);
		my $ms = staged_race('race', $want, $delay + 5000);
		ok(defined $ms, "$what: the stale value is undone");
		ok(defined $ms && $ms <= $first + 50,
			"$what: by the first step, within $first ms + 50 ms ("
			  . (defined $ms ? sprintf('%.0f ms', $ms) : 'never') . ')');
		# the key is not undone by anything else first
		ok(!defined $ms || $delay < 1000 || $ms >= $first / 2,
			"$what: it was the redelete, not the write");
	}
}
reload_settings([ "entity_cache.mode = 'delete'", "entity_cache.redelete_delay = 100",
	"entity_cache.redelete_steps = 4" ]);

# How many times a key is applied: once, then once per step.  What counts
# is the commit: a transaction that ran on for 300 ms after its write still
# gets every step; a change applied more than redelete_delay after its
# commit (written while Redis was unreachable) gets none, since no racing
# fill can still land then.
sub unlinks_for
{
	my ($sql, $before, $between) = @_;
	settle();
	$before->() if $before;
	redis_cli($redis, 'CONFIG', 'RESETSTAT');
	psql($sql);
	$between->() if $between;
	settle();
	my ($calls) = redis_cli($redis, 'INFO', 'commandstats') =~ /cmdstat_unlink:calls=(\d+)/;
	return $calls // 0;
}
is(unlinks_for(q{UPDATE app.entity SET label = label || '+' WHERE code = 'race'}), 5,
	'a key: UNLINKed once, then at 12.5, 25, 50 and 100 ms');
is(unlinks_for(q{BEGIN; UPDATE app.entity SET label = label || '+' WHERE code = 'race';
	SELECT pg_sleep(0.3); COMMIT}), 5,
	'a transaction that ran on after its write: every step, counted from its commit');
my $url = psql('SHOW entity_cache.redis_url');
is(unlinks_for(q{UPDATE app.entity SET label = label || '+' WHERE code = 'race'},
	sub {
		reload_settings(["entity_cache.redis_url = 'redis://127.0.0.1:1/0'"]);
		ok(wait_until(sub { psql('SELECT redis_connected FROM entity_cache.status') eq 'f' }),
			'worker cut off from Redis');
	},
	sub {
		usleep(500_000);
		reload_settings(["entity_cache.redis_url = '$url'"]);
	}), 1,
	'a change applied 0.5 s after its commit (Redis was away): no redelete');
reload_settings(["entity_cache.redelete_steps = 1"]);
is(unlinks_for(q{UPDATE app.entity SET label = label || '+' WHERE code = 'race'}), 2,
	'redelete_steps = 1: once, then at 100 ms');
reload_settings(["entity_cache.redelete_steps = 4"]);

reload_settings(["entity_cache.mode = 'delete'", "entity_cache.redelete_delay = 100"]);

# pending redeletes show in status, then drain
psql(q{INSERT INTO app.entity (code) SELECT 'p' || g FROM generate_series(1, 500) g});
reload_settings(["entity_cache.redelete_delay = 1000"]);
psql(q{UPDATE app.entity SET label = 'x' WHERE code LIKE 'p%'});
ok(wait_until(sub { ec_status($node)->{redelete_pending} >= 500 }, 10),
	'status.redelete_pending counts the keys waiting');
ok(wait_until(sub { ec_status($node)->{redelete_pending} eq '0' }, 10),
	'and drops to 0 once they were applied again');
reload_settings(["entity_cache.redelete_delay = 100"]);

# ---------------------------------------------------------------------
# warm()
# ---------------------------------------------------------------------
redis_cli($redis, 'FLUSHALL');
my $nrows = psql('SELECT count(*) FROM app.entity');
is(psql('SELECT entity_cache.warm()'), $nrows, 'warm() returns the number of rows');
ok(settle(), 'warm rows applied');
my $expect = psql(q{SELECT string_agg('entity:metadata:' || code || '=' || app.entity_json(e), E'\n' ORDER BY code)
	FROM app.entity e});
my @codes = split /\n/, psql('SELECT code FROM app.entity ORDER BY code');
my $got = join("\n", map { "entity:metadata:$_=" . (resp('GET', "entity:metadata:$_") // '(absent)') } @codes);
is($got, $expect, 'warm() in delete mode SET every row\'s key to the value function\'s output');
my $ttl = redis_cli($redis, 'TTL', 'entity:metadata:race');
ok($ttl > 250 && $ttl <= 300, "with the ttl ($ttl s)");

# ---------------------------------------------------------------------
# verify() and repair
# ---------------------------------------------------------------------
is(psql('SELECT count(*) FROM entity_cache.verify()'), '0', 'verify(): all fresh after warm');
settle();
redis_cli($redis, 'SET', 'entity:metadata:p2', '{"stale":true}');
redis_cli($redis, 'DEL', 'entity:metadata:p3');
redis_cli($redis, 'SET', 'entity:metadata:gone', 'x');
redis_cli($redis, 'SET', 'other:key', 'x');
is(psql(q{SELECT string_agg(key || ' ' || problem, ', ' ORDER BY key) FROM entity_cache.verify()}),
	'entity:metadata:gone orphan, entity:metadata:p2 stale',
	'verify() finds the planted stale key and the orphan, not the fresh or absent ones');
is(psql(q{SELECT count(*) FROM entity_cache.verify(repair => true)}), '2', 'repair reports them');
ok(settle(), 'repairs applied');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:p2') . redis_cli($redis, 'EXISTS', 'entity:metadata:gone'),
	'00', 'repair removed both (delete mode)');
is(psql('SELECT count(*) FROM entity_cache.verify()'), '0', 'verify() is clean after repair');

reload_settings(["entity_cache.mode = 'refresh'"]);
settle();
redis_cli($redis, 'SET', 'entity:metadata:p4', '{"stale":true}');
psql('SELECT count(*) FROM entity_cache.verify(repair => true)');
ok(settle(), 'refresh-mode repair applied');
is(redis_cli($redis, 'GET', 'entity:metadata:p4'),
	psql(q{SELECT app.entity_json(e) FROM app.entity e WHERE code = 'p4'}),
	'refresh mode: repair rewrote the stale key from its row');
reload_settings(["entity_cache.mode = 'delete'"]);

# Each batch has a snapshot of its own: a row changed (and its fresh value
# cached) while verify() is blocked in an earlier batch is compared as it
# is now.  Meanwhile the calling backend has no transaction id.
psql(q{
	CREATE TABLE app.snap (id int PRIMARY KEY, v text, pad text);
	INSERT INTO app.snap SELECT g, 'old', repeat('x', 200) FROM generate_series(1, 20000) g;
	CREATE FUNCTION app.snap_val(s app.snap) RETURNS text LANGUAGE sql VOLATILE AS $$
		SELECT CASE WHEN s.id = 1
			THEN (SELECT s.v FROM (SELECT pg_advisory_lock_shared(4242), pg_advisory_unlock_shared(4242)) x)
			ELSE s.v END
	$$;
	SELECT entity_cache.watch('app.snap', 'snap:{id}', 'app.snap_val(app.snap)');
});
ok(wait_for_sync($node), 'snap rows applied');
my $blocker = $node->background_psql($db);
$blocker->query_safe('SELECT pg_advisory_lock(4242)');
my $verifier = $node->background_psql($db);
$verifier->query_until(qr/started/, "\\echo started\n"
	  . "SELECT 'verify:' || coalesce(string_agg(key || ' ' || problem, ','), 'none') FROM entity_cache.verify('app.snap');\n");
ok(wait_until(sub {
	psql(q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted}) eq '1' }, 30),
	'verify() is blocked inside its first batch');
my $act = psql(q{SELECT coalesce(backend_xid::text, 'none'), backend_xmin IS NOT NULL
	FROM pg_stat_activity WHERE query LIKE 'SELECT ''verify:%'});
like($act, qr/^none\|/, 'the verifying backend holds no transaction id (pg_stat_activity.backend_xid)');
psql(q{UPDATE app.snap SET v = 'new' WHERE id = 20000});
ok(wait_for_sync($node), 'the update applied');
usleep(500_000);    # past its redelete too
resp('SET', 'snap:20000', 'new');
$blocker->query_safe('SELECT pg_advisory_unlock(4242)');
my ($vres) = $verifier->query_until(qr/verify:\S+/, '') =~ /verify:(\S+)/;
is($vres, 'none', 'the row changed during verify() was compared as committed now, not as at the start');
$verifier->quit;
$blocker->quit;

# 100,000 rows: completes, one pipelined GET batch at a time
psql(q{INSERT INTO app.entity (code, label) SELECT 'big' || g, 'b' FROM generate_series(1, 100000) g});
ok(wait_for_sync($node, 180), '100,000 inserts applied');
psql(q{SELECT entity_cache.warm()});
ok(settle(), '100,000 warm rows applied');
redis_cli($redis, 'SET', 'entity:metadata:big77777', 'stale');
my $t0 = time();
is(psql(q{SELECT string_agg(key || ' ' || problem, ',') FROM entity_cache.verify()}),
	'entity:metadata:big77777 stale', 'verify() over 100,000 rows finds the one stale key');
note(sprintf('verify() of %d rows took %.1f s', $nrows + 100000, time() - $t0));

# verify() keeps one batch of rendered values at a time, not the table's:
# 30,000 rows of 6 kB values (compressed in the table, whole in the JSON)
# are 180 MB rendered; the backend's peak grows by far less.  Inserted
# before watch(), so nothing is queued or cached: every key is absent,
# which verify() still renders and fetches.
psql(q{
	CREATE TABLE app.wide (id int PRIMARY KEY, pad text);
	INSERT INTO app.wide SELECT g, repeat('w', 6000) FROM generate_series(1, 30000) g;
	SELECT entity_cache.watch('app.wide', 'wide:{id}');
});
my $hwm = q{(regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\s+(\d+)'))[1]::bigint};
my ($wide_problems, $grown_kb, $asan) = split /\n/, psql(qq{
	CREATE TEMP TABLE hwm AS SELECT $hwm AS kb;
	SELECT count(*) FROM entity_cache.verify('app.wide');
	SELECT $hwm - kb FROM hwm;
	SELECT pg_read_file('/proc/self/maps') LIKE '%libasan%';
});
is($wide_problems, '0', 'verify() of wide rows: nothing cached, nothing to report');
note("verify() of app.wide: peak memory grew by $grown_kb kB");
SKIP:
{
	# scripts/test-memcheck: ASan keeps freed memory in quarantine (256 MB
	# by default) to catch use after free, so the peak says nothing there
	skip 'the backend runs with AddressSanitizer (scripts/test-memcheck)', 1 if $asan eq 't';
	cmp_ok($grown_kb, '<', 90 * 1024,
		"verify() of 180 MB of rendered values: the backend's peak grew by less than 90 MB");
}
psql('SELECT entity_cache.unwatch(\'app.wide\'); DROP TABLE app.wide');

# ---------------------------------------------------------------------
# the value function against node-postgres + JSON.stringify
# ---------------------------------------------------------------------
SKIP:
{
	skip 'node is not installed (scripts/install-deps installs it)', 3
	  unless system('command -v node >/dev/null 2>&1') == 0;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ "$FindBin::RealBin/../bench/consistency/setup" ], '>', \$out, '2>', \$err);
	ok($ok, 'npm installed pg') or diag($err);
	chomp(my $modules = $out);

	psql(q{
		INSERT INTO app.entity (code, entity_type, label, label_plural, icon, child_entity_codes,
			active_flag, created_ts, modified_ts) VALUES
		('n1', 'thing', 'Quote " backslash \ slash / tab	nl
 cr' || chr(13) || ' ctl' || chr(1) || chr(31), NULL, 'ü€😀', ARRAY['a', NULL, 'b"c', ''],
			false, '2024-03-05 10:00:00.123456+00', '1999-12-31 23:59:59.999999+05:30'),
		('n2', 'x', '', 'pl', NULL, '{}', true, '2024-03-05 10:00:00+00', '2024-02-29 00:00:00.5-08'),
		('n3', 'x', NULL, NULL, NULL, NULL, true, '0099-01-01 00:00:00.001+00', 'epoch');
	});
	my @ncodes = ('n1', 'n2', 'n3', 'race', 'p1');
	local $ENV{NODE_PATH} = $modules;
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	local $ENV{PGDATABASE} = $db;
	($out, $err) = ('', '');
	IPC::Run::run([ 'node', "$FindBin::RealBin/../bench/consistency/app_json.js",
		'app.entity', @ncodes ], '>', \$out, '2>', \$err) or diag($err);
	my $sqlout = join("\n", map { psql("SELECT app.entity_json(e) FROM app.entity e WHERE code = '$_'") } @ncodes);
	chomp $out;
	is($sqlout, $out, 'app.entity_json(row) equals node-postgres JSON.stringify(row), byte for byte');
	psql(q{SELECT entity_cache.warm()});
	settle();
	is(join("\n", map { resp('GET', "entity:metadata:$_") // '(absent)' } @ncodes), $out,
		'and warm() put exactly those bytes in Redis');
}

# the value function is kept by signature: pg_dump and a restore carry it
my $dump = PostgreSQL::Test::Utils::tempdir() . '/dump.sql';
$node->command_ok([ 'pg_dump', '-d', $db, '-f', $dump ], 'pg_dump');
psql('CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'restored', '-f', $dump ],
	'restore into another database');
is($node->safe_psql('restored', q{SELECT key_template || ' ' || value || ' ' ||
		(pg_catalog.to_regprocedure(value) IS NOT NULL)::text
	FROM entity_cache.watched WHERE relid = 'app.entity'::regclass}),
	'entity:metadata:{code} app.entity_json(app.entity) true',
	'after dump and restore the template keeps its value function, which resolves');

done_testing();
