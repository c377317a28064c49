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
use Time::HiRes qw(sleep);
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

sub rounds
{
	my ($from, $to) = @_;
	for my $i ($from .. $to)
	{
		$node->safe_psql('postgres', "UPDATE app.entity SET label = 'r$i'");
		wait_for_sync($node) or return 0;
		# every redelete done before the next round
		wait_until(sub { ec_status($node)->{redelete_pending} eq '0' }) or return 0;
	}
	return 1;
}

# the worker's TopMemoryContext, bytes used by its own chunks
sub top_used
{
	my $pid = ec_status($node)->{worker_pid};
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
	my $used;
	wait_until(sub {
		my $log = slurp_file($node->logfile, $offset);
		($used) = $log =~ /level: 0; TopMemoryContext: \d+ total in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/;
		defined $used;
	}) or die 'no memory context dump in the log';
	return $used;
}

ok(rounds(1, 3), 'warm-up rounds applied and redeleted');
my $before = top_used();
ok(rounds(4, 23), '20 rounds of 1,000 keys applied and redeleted');
my $after = top_used();
my $pid = ec_status($node)->{worker_pid};
cmp_ok($after - $before, '<', 200_000,
	"worker's TopMemoryContext: $before bytes used before, $after after (pid $pid)");

$node->stop;
done_testing();
