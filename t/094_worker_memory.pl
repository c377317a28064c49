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

sub rounds
{
	my ($from, $to) = @_;
	for my $i ($from .. $to)
	{
		$node->safe_psql('postgres', "UPDATE app.entity SET label = 'r$i'");
		wait_for_sync($node) or return 0;
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

ok(rounds(1, 3), 'warm-up rounds');
my $before = top_used();
ok(rounds(4, 43), '40 rounds of 2,000 keys');
my $after = top_used();
cmp_ok($after - $before, '<', 1000,
	"worker's TopMemoryContext: $before bytes used before, $after after");

$node->stop;
done_testing();
