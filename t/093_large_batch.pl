# A batch whose commands add up to more than 1 GB (refresh mode, 1,000 rows
# of about 1.1 MB of JSON each) is applied, not turned into an "out of
# memory" ERROR: an output buffer is a StringInfo, limited to 1 GB, and a
# worker that failed on it was restarted to fail again on the same batch,
# forever, with no invalidation going through.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $redis = start_redis();
my $node = new_node('large_batch', $redis, conf => "entity_cache.mode = 'refresh'\n");
ok(wait_for_worker($node), 'worker connected');
my $pid = ec_status($node)->{worker_pid};

$node->safe_psql('postgres',
	q{INSERT INTO app.entity (code, label) SELECT 'e' || g, 'small' FROM generate_series(1, 1000) g});
ok(wait_for_sync($node), 'small rows applied');

# 1,000 rows of 1.1 MB each (compressed in the table, not in the JSON)
my $errors_before = ec_status($node)->{errors_total};
$node->safe_psql('postgres', q{UPDATE app.entity SET label = repeat('x', 1100000)});
ok(wait_for_sync($node, 180), 'the 1.1 GB batch is applied');
is(ec_status($node)->{worker_pid}, $pid, 'by the same worker: no ERROR restarted it');
is(redis_cli($redis, 'STRLEN', 'entity:metadata:e1') > 1100000 ? 'big' : 'small', 'big',
	'the key holds the large JSON');
is(redis_cli($redis, 'STRLEN', 'entity:metadata:e1000') > 1100000 ? 'big' : 'small', 'big',
	'so does the last key of the batch');

$node->stop;
done_testing();
