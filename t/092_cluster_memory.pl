# Memory of the worker on a Redis Cluster stays flat over many batches and
# their redeletes.  A redelete in delete mode runs outside any transaction,
# where the worker's current memory context is TopMemoryContext: whatever
# the cluster path allocates there and does not free accumulates for the
# worker's lifetime.  The worker's TopMemoryContext is read with
# pg_log_backend_memory_contexts() after a warm-up and after 20 rounds of
# 1,000 keys (each applied, then redeleted 4 times).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $c = start_redis_cluster(primaries => 3, replicas => 0);
my @primaries = cluster_primaries($c);
is(scalar @primaries, 3, 'cluster of 3 primaries is up');
my $url = 'redis://' . join(',', map { "127.0.0.1:$_" } @primaries);
# the default redelete: 4 steps within 100 ms
my $node = new_node('cluster_memory', $c->{seed}, redelete => 1,
	conf => "entity_cache.redis_url = '$url'\n");
ok(wait_for_worker($node), 'worker connected to the cluster');
is(ec_status($node)->{cluster_nodes}, '3', 'status: 3 primaries');

$node->safe_psql('postgres',
	q{INSERT INTO app.entity (code, label) SELECT 'e' || g, 'L' || g FROM generate_series(1, 1000) g});
ok(wait_for_sync($node), 'rows applied');

ok(update_rounds($node, 1, 3, redeletes => 1), 'warm-up rounds applied and redeleted');
my $before = worker_top_memory($node);
ok(update_rounds($node, 4, 23, redeletes => 1), '20 rounds of 1,000 keys applied and redeleted');
my $after = worker_top_memory($node);
my $pid = ec_status($node)->{worker_pid};
cmp_ok($after - $before, '<', 200_000,
	"worker's TopMemoryContext: $before bytes used before, $after after (pid $pid)");

$node->stop;
done_testing();
