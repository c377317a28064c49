# A redelete that Redis answers with an error (a read-only Redis: READONLY)
# while the connection stays up must not be retried in a busy loop: the
# worker backs off as after a failed batch, and once Redis takes writes
# again the redelete goes through.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use EntityCacheTest;

my $redis = start_redis();
# one redelete step, 1 s after the key was applied: time to make Redis
# read-only before it falls due
my $node = new_node('redelete_errors', $redis, redelete => 1,
	conf => "entity_cache.redelete_delay = 1000\nentity_cache.redelete_steps = 1\n");
ok(wait_for_worker($node), 'worker connected');

$node->safe_psql('postgres', q{INSERT INTO app.entity (code, label) VALUES ('r1', 'one')});
ok(wait_for_sync($node), 'the insert is applied');
# the queue is empty now: only the pending redelete talks to Redis
redis_cli($redis, 'REPLICAOF', '127.0.0.1', '1');
ok(wait_until(sub { ec_status($node)->{last_error} =~ /redelete: .*READONLY/ }, 10),
	'the redelete fails with READONLY');

my $before = ec_status($node)->{errors_total};
my $unlinks_before = unlink_calls();
sleep 3;
my $errors = ec_status($node)->{errors_total} - $before;
my $unlinks = unlink_calls() - $unlinks_before;
# a backoff of at least 100 ms allows some 30 attempts in 3 s; a busy loop
# makes thousands
cmp_ok($errors, '<', 100, "3 s of a failing redelete: $errors errors, not a busy loop");
cmp_ok($unlinks, '<', 100, "3 s of a failing redelete: $unlinks UNLINKs sent to Redis");

redis_cli($redis, 'REPLICAOF', 'NO', 'ONE');
ok(wait_until(sub { ec_status($node)->{redelete_pending} eq '0' }, 30),
	'Redis writable again: the redelete goes through');

# UNLINK calls Redis counted (failed ones included)
sub unlink_calls
{
	my $info = redis_cli($redis, 'INFO', 'commandstats');
	my ($calls) = $info =~ /cmdstat_unlink:calls=(\d+)/;
	my ($rejected) = $info =~ /cmdstat_unlink:.*rejected_calls=(\d+)/;
	return ($calls // 0) + ($rejected // 0);
}

$node->stop;
done_testing();
