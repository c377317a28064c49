# The worker's TopMemoryContext stays flat over many batches on one Redis
# node: nothing the worker allocates between transactions (where the
# current context is TopMemoryContext) is left behind.  Every 2,000 rows
# removed the worker vacuums its queue; 40 rounds of 2,000 keys make 40
# vacuums.  Read with pg_log_backend_memory_contexts().
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $redis = start_redis();
my $node = new_node('worker_memory', $redis);
ok(wait_for_worker($node), 'worker connected');
$node->safe_psql('postgres',
	q{INSERT INTO app.entity (code, label) SELECT 'e' || g, 'L' || g FROM generate_series(1, 2000) g});
ok(wait_for_sync($node), 'rows applied');

ok(update_rounds($node, 1, 3), 'warm-up rounds');
my $before = worker_top_memory($node);
ok(update_rounds($node, 4, 43), '40 rounds of 2,000 keys');
my $after = worker_top_memory($node);
cmp_ok($after - $before, '<', 1000,
	"worker's TopMemoryContext: $before bytes used before, $after after");

$node->stop;
done_testing();
