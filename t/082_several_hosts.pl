# Several hosts in entity_cache.redis_url (redis://h1,h2,h3/0): tried in
# order at each connect, a host that refuses or is a replica is skipped;
# after a promotion (without Sentinel) the old master's READONLY sends the
# worker to the next host that is a master; with no host usable, status
# names every host's failure.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $a = start_redis();
my $b = start_redis(extra => [ '--replicaof', '127.0.0.1', $a->{port} ]);
my $closed = PostgreSQL::Test::Cluster::get_free_port();
my $url = "redis://127.0.0.1:$closed,127.0.0.1:$b->{port},127.0.0.1:$a->{port}/0";
my $node = new_node('hosts', $a, conf => "entity_cache.redis_url = '$url'\n");

ok(wait_until(sub { ec_status($node)->{redis_node} eq "127.0.0.1:$a->{port}" }, 30),
	'a closed port and a replica are skipped: connected to the master, the third host');

my $round = 0;
sub write_round
{
	my ($r) = @_;
	my $prefix = 'h' . ++$round . '_';
	redis_fill($r, "entity:metadata:$prefix", 1, 100, 'stale');
	is(redis_cli($r, 'WAIT', '1', '5000'), '1', "round $round: stale keys replicated");
	$node->safe_psql('postgres',
		"INSERT INTO app.entity (code) SELECT '$prefix' || g FROM generate_series(1, 100) g");
	return $prefix;
}

my $p = write_round($a);
ok(wait_for_sync($node), 'first round applied');
is(redis_exist_count($a, "entity:metadata:$p", 100), '0', 'first round: keys gone from the master');

# promote the replica by hand, demote the master: the old master answers
# READONLY, and the worker moves on to the next host that is a master
redis_cli($b, 'REPLICAOF', 'NO', 'ONE');
redis_cli($a, 'REPLICAOF', '127.0.0.1', $b->{port});
ok(wait_until(sub { redis_cli($b, 'INFO', 'replication') =~ /slave0:.*state=online/ }, 30),
	'roles swapped');
$p = write_round($b);
ok(wait_for_sync($node, 60), 'after the promotion: sync() succeeds');
my $st = ec_status($node);
is($st->{redis_node}, "127.0.0.1:$b->{port}", 'after the promotion: connected to the new master');
is(redis_exist_count($b, "entity:metadata:$p", 100), '0', 'after the promotion: no invalidation lost');

# nothing usable: every host's failure is shown
stop_redis($a);
stop_redis($b);
$node->safe_psql('postgres', "SELECT entity_cache.invalidate_key('x')");
ok(wait_until(sub {
	$st = ec_status($node);
	$st->{redis_connected} eq 'f'
	  && $st->{last_error} =~ /127\.0\.0\.1:$closed.*; .*127\.0\.0\.1:$b->{port}.*; .*127\.0\.0\.1:$a->{port}/
}, 30), "no host usable: last_error names all three ($st->{last_error})");

$node->stop;
done_testing();
