# On a Redis Cluster, a redelete that one node cannot take (its slot lost
# its primary) must not hold back the redeletes of keys on the other nodes:
# each key counts by its own node's acknowledgement, as in a batch.  Here
# the slot of one applied key is deleted from the cluster before its
# redelete falls due; a key of another slot, applied after, gets a racing
# reader's stale value, which its redelete must still remove, and its
# entry must then be done, not kept pending with the failing one.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $c = start_redis_cluster(primaries => 3, replicas => 0,
	extra => [ '--cluster-require-full-coverage', 'no' ]);
my @primaries = cluster_primaries($c);
is(scalar @primaries, 3, 'cluster of 3 primaries is up');
my $url = 'redis://' . join(',', map { "127.0.0.1:$_" } @primaries);
# one redelete, 1 s after the key was applied
my $node = new_node('cluster_redelete', $c->{seed}, redelete => 1,
	conf => "entity_cache.redis_url = '$url'\nentity_cache.redelete_delay = 1000\n"
	  . "entity_cache.redelete_steps = 1\n");
ok(wait_for_worker($node), 'worker connected to the cluster');

# the node that owns a key (the others answer MOVED)
sub owner
{
	my ($key) = @_;
	for my $r (@{ $c->{nodes} })
	{
		return $r if redis_cli($r, 'GET', $key) !~ /MOVED/;
	}
	die "no owner for $key";
}

# x and y: keys on two different primaries
my ($x, $y) = ('entity:metadata:x1');
my $xowner = owner($x);
for my $i (1 .. 50)
{
	next if owner("entity:metadata:y$i")->{port} == $xowner->{port};
	$y = "entity:metadata:y$i";
	$node->safe_psql('postgres', "INSERT INTO app.entity (code, label) VALUES ('y$i', 'one')");
	last;
}
ok($y, "$x and $y live on different primaries");
$node->safe_psql('postgres', "INSERT INTO app.entity (code, label) VALUES ('x1', 'one')");
ok(wait_for_sync($node), 'x and y applied');
ok(wait_until(sub { ec_status($node)->{redelete_pending} eq '0' }), 'their first redeletes done');

# x applied, then its slot taken from its primary before the redelete
my $xslot = redis_cli($xowner, 'CLUSTER', 'KEYSLOT', $x);
$node->safe_psql('postgres', "UPDATE app.entity SET label = 'two' WHERE code = 'x1'");
ok(wait_for_sync($node), 'x applied again');
is(redis_cli($xowner, 'CLUSTER', 'DELSLOTS', $xslot), 'OK', "slot $xslot of x has no primary now");
ok(wait_until(sub { ec_status($node)->{last_error} =~ /redelete: / }, 30),
	"x's redelete fails");

# y applied, then a racing reader's stale value lands on it
(my $ycode = $y) =~ s/.*://;
$node->safe_psql('postgres', "UPDATE app.entity SET label = 'two' WHERE code = '$ycode'");
ok(wait_for_sync($node), 'y applied');
my $yowner = owner($y);
redis_cli($yowner, 'SET', $y, 'stale');
ok(wait_until(sub { redis_cli($yowner, 'EXISTS', $y) eq '0' }, 20),
	"y's redelete removes the stale value although x's keeps failing");
# ... and y's entry is done: only x's waits.  (Kept, every key applied
# while x's slot is down would wait too, resent at each try, and the
# pending table would grow without bound.)
ok(wait_until(sub { ec_status($node)->{redelete_pending} eq '1' }, 20),
	"only x's redelete is still pending");

$node->stop;
done_testing();
