# Hostile input end to end: keys with quotes, spaces, newlines, glob
# characters, non-ASCII and 512 KiB length reach Redis exactly; a flush
# pattern matches only its literal text; a Redis that answers with errors
# (NOPERM, OOM) keeps the rows queued until it accepts them.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $redis = start_redis();
my $node = new_node('hostile', $redis);

$node->safe_psql('postgres', q{
	CREATE TABLE app.hostile (id int PRIMARY KEY, k text);
	SELECT entity_cache.watch('app.hostile', 'h:{k}');
	CREATE TABLE app.globby (id int PRIMARY KEY);
	SELECT entity_cache.watch('app.globby', 'g*?[]\:{id}');
});

my %odd = (
	1 => q{it's "quoted"},
	2 => q{with spaces  and	tab},
	3 => "line\nbreak",
	4 => q{glob*?[x]\\},
	5 => "Ünïcødé ключ 鍵",
	6 => q{h:*},
);
for my $id (sort keys %odd)
{
	my $v = $odd{$id};
	(my $sql = $v) =~ s/'/''/g;
	$node->safe_psql('postgres', "INSERT INTO app.hostile VALUES ($id, E'" .
		join('', map { $_ eq "\n" ? '\n' : $_ eq '\\' ? '\\\\' : $_ } split //, $sql) . "')");
}
# a 512 KiB key: built inside Redis with Lua, since argv cannot carry it
$node->safe_psql('postgres', q{INSERT INTO app.hostile VALUES (7, repeat('x', 524288))});
ok(wait_for_sync($node), 'inserts applied');

# cache every key exactly as the application would, plus near misses that
# a glob-interpreting client would wrongly hit
redis_cli($redis, 'SET', "h:$odd{$_}", 'cached') for keys %odd;
redis_cli($redis, 'EVAL', "redis.call('SET', 'h:' .. string.rep('x', 524288), 'cached')", '0');
redis_cli($redis, 'SET', 'h:glob_?[x]\\', 'near miss');
redis_cli($redis, 'SET', 'h:anything', 'near miss');
is(redis_cli($redis, 'EXISTS', "h:$odd{$_}"), '1', "fixture key $_ set") for sort keys %odd;

$node->safe_psql('postgres', q{UPDATE app.hostile SET k = k});
ok(wait_for_sync($node), 'updates applied');
for my $id (sort keys %odd)
{
	is(redis_cli($redis, 'EXISTS', "h:$odd{$id}"), '0', "odd key $id deleted exactly");
}
is(redis_cli($redis, 'EVAL', "return redis.call('EXISTS', 'h:' .. string.rep('x', 524288))", '0'),
	'0', '512 KiB key deleted');
is(redis_cli($redis, 'GET', 'h:glob_?[x]\\'), 'near miss', 'glob characters are not a pattern for UNLINK');
is(redis_cli($redis, 'GET', 'h:anything'), 'near miss', 'key "h:*" is not a pattern either');

# refresh mode writes exactly the row's JSON under such keys
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET entity_cache.mode = 'refresh';
	SELECT pg_reload_conf();
});
ok(wait_until(sub {
	$node->safe_psql('postgres', 'SHOW entity_cache.mode') eq 'refresh' }), 'refresh mode on');
sleep 1;
$node->safe_psql('postgres', q{UPDATE app.hostile SET k = k WHERE id IN (3, 5)});
ok(wait_for_sync($node), 'refresh applied');
for my $id (3, 5)
{
	my $json = $node->safe_psql('postgres', "SELECT row_to_json(h)::text FROM app.hostile h WHERE id = $id");
	is(redis_cli($redis, 'GET', "h:$odd{$id}"), $json, "refresh wrote the JSON of row $id under its odd key");
}
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET entity_cache.mode;
	SELECT pg_reload_conf();
});
ok(wait_until(sub {
	$node->safe_psql('postgres', 'SHOW entity_cache.mode') eq 'delete' }), 'delete mode again');
sleep 1;

# TRUNCATE's flush pattern escapes the glob characters of the template
redis_cli($redis, 'SET', 'g*?[]\\:1', 'flush me');
redis_cli($redis, 'SET', 'g*?[]\\:22', 'flush me');
redis_cli($redis, 'SET', 'gX?[]\\:1', 'keep');
redis_cli($redis, 'SET', 'gabc:1', 'keep');
redis_cli($redis, 'SET', 'g*?[]\\', 'keep');
$node->safe_psql('postgres', 'TRUNCATE app.globby');
ok(wait_for_sync($node), 'truncate applied');
is(redis_cli($redis, 'EXISTS', 'g*?[]\\:1', 'g*?[]\\:22'), '0', 'keys of the literal prefix flushed');
is(redis_cli($redis, 'EXISTS', 'gX?[]\\:1', 'gabc:1', 'g*?[]\\'), '3', 'keys a glob would have matched are kept');

# An ACL user that may not UNLINK: NOPERM is recorded, the rows stay queued,
# and granting the right drains them without a restart.
redis_cli($redis, 'ACL', 'SETUSER', 'limited', 'on', '>lpw', '~*', '+@all', '-unlink', '-del');
$node->safe_psql('postgres', qq{
	ALTER SYSTEM SET entity_cache.redis_url = 'redis://limited:lpw\@127.0.0.1:$redis->{port}/0';
	SELECT pg_reload_conf();
});
ok(wait_until(sub {
	$node->safe_psql('postgres', 'SELECT redis_connected FROM entity_cache.status') eq 't' }),
	'worker connected as the limited user');
my $errors0 = $node->safe_psql('postgres', 'SELECT errors_total FROM entity_cache.status');
redis_cli($redis, 'SET', 'h:perm', 'cached');
$node->safe_psql('postgres', q{INSERT INTO app.hostile VALUES (8, 'perm')});
ok(wait_until(sub {
	$node->safe_psql('postgres', 'SELECT last_error FROM entity_cache.status') =~ /NOPERM/ }),
	'NOPERM is reported in status.last_error');
ok($node->safe_psql('postgres', 'SELECT errors_total FROM entity_cache.status') > $errors0,
	'NOPERM is counted');
is($node->safe_psql('postgres', 'SELECT queue_depth FROM entity_cache.status'), '1',
	'the row stays queued while Redis refuses it');
is(redis_cli($redis, 'GET', 'h:perm'), 'cached', 'the key is still there');
redis_cli($redis, 'ACL', 'SETUSER', 'limited', '+unlink');
ok(wait_for_sync($node), 'granted UNLINK: drained');
is(redis_cli($redis, 'EXISTS', 'h:perm'), '0', 'key deleted once allowed');

# OOM: Redis at maxmemory with noeviction refuses SET (refresh mode); the
# rows are kept and applied once memory is raised.
$node->safe_psql('postgres', qq{
	ALTER SYSTEM RESET entity_cache.redis_url;
	ALTER SYSTEM SET entity_cache.redis_url = 'redis://127.0.0.1:$redis->{port}/0';
	ALTER SYSTEM SET entity_cache.mode = 'refresh';
	SELECT pg_reload_conf();
});
ok(wait_until(sub {
	$node->safe_psql('postgres', 'SHOW entity_cache.mode') eq 'refresh' }), 'refresh mode for OOM');
sleep 1;
# maxmemory far below what Redis uses, not just above it: client buffers
# move used_memory by kilobytes (a connection's last reply, a resized query
# buffer), so a margin of a few bytes made this flaky
redis_cli($redis, 'CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
redis_cli($redis, 'CONFIG', 'SET', 'maxmemory', 1);
like(redis_cli($redis, 'SET', 'probe', 'x'), qr/^OOM/, 'Redis refuses writes');
$node->safe_psql('postgres', q{UPDATE app.hostile SET k = 'oom' WHERE id = 8});
ok(wait_until(sub {
	$node->safe_psql('postgres', 'SELECT last_error FROM entity_cache.status') =~ /OOM/ }),
	'OOM is reported in status.last_error');
ok($node->safe_psql('postgres', 'SELECT queue_depth FROM entity_cache.status') >= 1,
	'rows stay queued while Redis is out of memory');
redis_cli($redis, 'CONFIG', 'SET', 'maxmemory', '0');
ok(wait_for_sync($node), 'memory raised: drained');
like(redis_cli($redis, 'GET', 'h:oom'), qr/"k":"oom"/, 'refresh SET applied after OOM');

# A queue changed by hand must not crash the worker: a row without a key
# is removed with a WARNING; a column added to the queue stops the worker's
# reading (the C code reads columns by position) with an error in status,
# and reinstalling the extension recovers.
my $pid0 = worker_pid($node);
$node->safe_psql('postgres', q{
	ALTER TABLE entity_cache.queue ALTER COLUMN key DROP NOT NULL;
	INSERT INTO entity_cache.queue (op, key) VALUES ('k', NULL);
});
ok(wait_for_sync($node), 'a queue row without a key is removed');
is($node->safe_psql('postgres', 'SELECT count(*) FROM entity_cache.queue'), '0', 'queue empty');
ok($node->log_contains(qr/removing a queue row without op or key/), 'with a WARNING');
$node->safe_psql('postgres', q{ALTER TABLE entity_cache.queue ADD COLUMN junk int});
ok(wait_until(sub {
	$node->safe_psql('postgres', 'SELECT last_error FROM entity_cache.status') =~ /does not have the columns/ }),
	'a queue with an extra column: the worker says so in status');
my ($ret, $out, $err) = $node->psql('postgres', q{UPDATE app.hostile SET k = k WHERE id = 3});
like($err, qr/entity_cache.queue does not have the columns this library expects/,
	'and writers get a clear error');
is(worker_pid($node), $pid0, 'the worker did not crash');
$node->safe_psql('postgres', q{
	DROP EXTENSION entity_cache CASCADE;
	CREATE EXTENSION entity_cache;
	SELECT entity_cache.watch('app.hostile', 'h:{k}');
});
redis_cli($redis, 'SET', 'h:after', 'cached');
$node->safe_psql('postgres', q{UPDATE app.hostile SET k = 'after' WHERE id = 3});
ok(wait_for_sync($node), 'reinstalled: drains again');
like(redis_cli($redis, 'GET', 'h:after'), qr/"k":"after"/, 'the worker applies the new queue');
is(worker_pid($node), $pid0, 'same worker throughout');

$node->stop;
done_testing();
