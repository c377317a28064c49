# Every write path ends with the key gone from a real Redis (delete mode),
# or rewritten with the committed row's JSON and a TTL (refresh mode).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $redis = start_redis();
my $node = new_node('main', $redis);

# the worker shows itself
ok(wait_until(sub { worker_count($node) eq '1' }),
	'worker runs with backend_type "entity_cache worker"');
ok(wait_for_worker($node), 'status says the worker is connected');

$node->safe_psql('postgres', q{
	CREATE TABLE app.child (id int PRIMARY KEY,
		parent text REFERENCES app.entity(code) ON DELETE CASCADE, name text);
	SELECT entity_cache.watch('app.child', 'child:{id}');
	INSERT INTO app.entity (code, label) SELECT 'c' || g, 'L' || g FROM generate_series(1, 40) g;
	INSERT INTO app.child VALUES (1, 'c9', 'x'), (2, 'c9', 'y');
});
ok(wait_for_sync($node), 'initial inserts applied');

sub cache_all
{
	for my $i (1 .. 40) { redis_cli($redis, 'SET', "entity:metadata:c$i", 'stale', 'EX', '300') }
	redis_cli($redis, 'SET', "child:$_", 'stale') for (1, 2);
	redis_cli($redis, 'SET', 'unrelated:key', 'keep');
}

# each case: SQL, then the keys that must be gone and those that must stay
my @cases = (
	[ 'INSERT', q{INSERT INTO app.entity (code) VALUES ('c41')}, [], [] ],
	[ 'UPDATE', q{UPDATE app.entity SET label = 'u' WHERE code = 'c1'}, ['c1'], ['c2'] ],
	[ 'UPDATE of the key column', q{UPDATE app.entity SET code = 'c2x' WHERE code = 'c2'}, ['c2'], ['c3'] ],
	[ 'DELETE', q{DELETE FROM app.entity WHERE code = 'c3'}, ['c3'], ['c4'] ],
	[ 'ON CONFLICT DO UPDATE', q{INSERT INTO app.entity (code, label) VALUES ('c4', 'oc') ON CONFLICT (code) DO UPDATE SET label = excluded.label}, ['c4'], ['c5'] ],
	[ 'MERGE', q{MERGE INTO app.entity e USING (VALUES ('c5', 'm')) v(code, label) ON e.code = v.code WHEN MATCHED THEN UPDATE SET label = v.label WHEN NOT MATCHED THEN INSERT (code, label) VALUES (v.code, v.label)}, ['c5'], ['c6'] ],
	[ 'multi-row UPDATE', q{UPDATE app.entity SET label = 'multi' WHERE code IN ('c6', 'c7')}, ['c6', 'c7'], ['c8'] ],
	[ 'DO block', q{DO $$BEGIN UPDATE app.entity SET label = 'do' WHERE code = 'c8'; END$$}, ['c8'], ['c10'] ],
	[ 'cascade', q{DELETE FROM app.entity WHERE code = 'c9'}, ['c9'], ['c10'], ['child:1', 'child:2'] ],
	[ 'replica role', q{SET session_replication_role = replica; UPDATE app.entity SET label = 'r' WHERE code = 'c10'}, ['c10'], ['c11'] ],
	[ 'function', q{CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS $$UPDATE app.entity SET label = 'f' WHERE code = 'c11'$$; SELECT pg_temp.f()}, ['c11'], ['c12'] ],
	[ 'invalidate()', q{SELECT entity_cache.invalidate('c12')}, ['c12'], ['c13'] ],
	[ 'invalidate_key()', q{SELECT entity_cache.invalidate_key('entity:metadata:c13')}, ['c13'], ['c14'] ],
);

for my $c (@cases)
{
	my ($name, $sql, $gone, $kept, $gone_raw) = @$c;
	cache_all();
	$node->safe_psql('postgres', $sql);
	ok(wait_for_sync($node), "$name: sync");
	for my $k (@$gone)
	{
		is(redis_cli($redis, 'EXISTS', "entity:metadata:$k"), '0', "$name: entity:metadata:$k gone");
	}
	for my $k (@{ $gone_raw // [] })
	{
		is(redis_cli($redis, 'EXISTS', $k), '0', "$name: $k gone");
	}
	for my $k (@$kept)
	{
		is(redis_cli($redis, 'GET', "entity:metadata:$k"), 'stale', "$name: entity:metadata:$k untouched");
	}
}

# notifications of every write path: t/015_notify.pl

# COPY FROM
cache_all();
$node->safe_psql('postgres', "COPY app.entity (code, label) FROM stdin;\nc200\tcopied\nc100\tnew\n\\.\n");
$node->safe_psql('postgres', q{UPDATE app.entity SET label = NULL WHERE code = 'c200'});
ok(wait_for_sync($node), 'COPY: sync');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:c100'), '0', 'COPY: new key invalidated');

# TRUNCATE flushes the template's keys and nothing else
cache_all();
redis_cli($redis, 'SET', 'entity:metadataX', 'keep');
$node->safe_psql('postgres', 'TRUNCATE app.entity CASCADE');
ok(wait_for_sync($node), 'TRUNCATE: sync');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:c20'), '0', 'TRUNCATE: keys flushed');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:c33'), '0', 'TRUNCATE: all keys flushed');
is(redis_cli($redis, 'GET', 'unrelated:key'), 'keep', 'TRUNCATE: unrelated key kept');
is(redis_cli($redis, 'GET', 'entity:metadataX'), 'keep', 'TRUNCATE: key outside the pattern kept');

# rolled back: nothing applied
redis_cli($redis, 'SET', 'entity:metadata:rb', 'cached');
$node->safe_psql('postgres', q{BEGIN; INSERT INTO app.entity (code) VALUES ('rb'); ROLLBACK;});
ok(wait_for_sync($node), 'rollback: sync');
is(redis_cli($redis, 'GET', 'entity:metadata:rb'), 'cached', 'rolled-back insert leaves the key');

# refresh mode: the key holds exactly the committed row's JSON, with a TTL
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET entity_cache.mode = 'refresh';
	ALTER SYSTEM SET entity_cache.ttl = 120;
	SELECT pg_reload_conf();
});
sleep 1;
$node->safe_psql('postgres', q{INSERT INTO app.entity (code, label) VALUES ('r1', 'first')});
$node->safe_psql('postgres', q{UPDATE app.entity SET label = 'second' WHERE code = 'r1'});
ok(wait_for_sync($node), 'refresh: sync');
my $expected = $node->safe_psql('postgres', q{SELECT row_to_json(e)::text FROM app.entity e WHERE code = 'r1'});
is(redis_cli($redis, 'GET', 'entity:metadata:r1'), $expected, 'refresh: key holds the new row JSON');
my $ttl = redis_cli($redis, 'TTL', 'entity:metadata:r1');
ok($ttl > 0 && $ttl <= 120, "refresh: key has a TTL ($ttl)");

$node->safe_psql('postgres', q{UPDATE app.entity SET code = 'r2' WHERE code = 'r1'});
ok(wait_for_sync($node), 'refresh key change: sync');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:r1'), '0', 'refresh: old key of a key change deleted');
like(redis_cli($redis, 'GET', 'entity:metadata:r2'), qr/"code":"r2"/, 'refresh: new key written');

$node->safe_psql('postgres', q{DELETE FROM app.entity WHERE code = 'r2'});
ok(wait_for_sync($node), 'refresh delete: sync');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:r2'), '0', 'refresh: deleted row deletes the key');

# flush_all removes every key of every template, nothing else
redis_cli($redis, 'EVAL',
	"for i = 1, 2500 do redis.call('SET', 'entity:metadata:f' .. i, 'x') end", '0');
redis_cli($redis, 'SET', 'child:77', 'x');
redis_cli($redis, 'SET', 'entity:other', 'keep');
is($node->safe_psql('postgres', 'SELECT entity_cache.flush_all()'), '2', 'flush_all queues one flush per template');
ok(wait_for_sync($node), 'flush_all: sync');
is(redis_cli($redis, 'EVAL', "return #redis.call('keys', 'entity:metadata:*')", '0'), '0', 'flush_all: every entity key gone');
is(redis_cli($redis, 'EXISTS', 'child:77'), '0', 'flush_all: second template flushed');
is(redis_cli($redis, 'GET', 'entity:other'), 'keep', 'flush_all: unrelated key kept');

my $status = $node->safe_psql('postgres',
	'SELECT queue_depth, applied_total > 0, errors_total FROM entity_cache.status');
is($status, '0|t|0', 'status: empty queue, rows applied, no error');

$node->stop;
done_testing();
