# entity_cache.database names a database that does not exist yet: the
# worker waits for it quietly (no FATAL once a second), then serves it once
# it is created.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $redis = start_redis();
my $node = new_node('nodb', $redis, no_schema => 1,
	conf => "entity_cache.database = 'later'\n");

# long enough for a crash loop (one restart a second) to show
ok(wait_until(sub { slurp_file($node->logfile) =~ /waiting for it/ }),
	'the worker says it waits for the database');
sleep 8;
my $log = slurp_file($node->logfile);
my $fatals = () = $log =~ /FATAL:  database "later" does not exist/g;
ok($fatals <= 1, "no FATAL loop ($fatals FATAL lines in about 8 s)");
my $waits = () = $log =~ /database "later" does not exist or does not accept connections; waiting for it/g;
is($waits, 1, 'the wait is logged once');
my $exits = () = $log =~ /"entity_cache worker" \(PID \d+\) exited/g;
ok($exits <= 1, "the waiting worker is not restarted over and over ($exits exits)");

# the database appears: the worker connects to it and serves it
$node->safe_psql('postgres', 'CREATE DATABASE later');
$node->safe_psql('later', slurp_file("$FindBin::RealBin/../scripts/app_entity.sql"));
$node->safe_psql('later', 'CREATE EXTENSION entity_cache');
ok(wait_until(sub {
	$node->safe_psql('postgres',
		"SELECT datname FROM pg_stat_activity WHERE backend_type = 'entity_cache worker'") eq 'later'
}, 60), 'the worker serves the database once it exists');
ok(wait_until(sub { $node->safe_psql('later', 'SELECT redis_connected FROM entity_cache.status') eq 't' }, 60),
	'status there shows the worker connected');

redis_cli($redis, 'SET', 'entity:metadata:x', 'cached');
$node->safe_psql('later', q{INSERT INTO app.entity (code, label) VALUES ('x', 'y')});
ok(wait_until(sub { $node->safe_psql('later', q{SELECT entity_cache.sync('1 s')}) eq 't' }, 60),
	'sync in the served database');
is(redis_cli($redis, 'EXISTS', 'entity:metadata:x'), '0', 'invalidation works there');

$node->stop;
done_testing();
