# Redis Cluster: 3 primaries + 3 replicas on loopback, created with
# redis-cli --cluster create, with requirepass; the worker logs in as an ACL
# user limited to the commands it needs, with the primaries as seeds, and
# finds the slot map with CLUSTER SLOTS.
#
#   - refresh mode writes every key on the primary that owns its slot
#     (found there by KEYS, no redirection needed), over all 3 primaries,
#     also 20,000 keys of one commit;
#     delete mode removes them; hash-tagged keys ('{{' '}}' in templates)
#     land in their tag's slot, many keys of one slot go in one UNLINK
#   - flush_all() removes every matching key on every primary and nothing
#     else
#   - 2,000 slots resharded while 500 writes/s run, then a replica promoted
#     with CLUSTER FAILOVER and a primary killed with kill -9 while writes
#     run: after sync(), 0 lost invalidations and 0 stale keys (the cache is
#     filled with every row's JSON before each fault; "lost" and "stale" as
#     in EntityCacheTest::lost_and_stale)
#   - a second cluster, TLS only (clients, bus, replication): rediss://
#     with the CA checked, keys written and removed on every primary
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use EntityCacheTest;

my $ncodes = 1000;
my $t0 = time();

# every node wants a password, and the worker logs in as an ACL user that
# may run only what it needs (created on each node: ACLs do not propagate)
my $c = start_redis_cluster(primaries => 3, replicas => 1, password => 'clusterpw',
	extra => [ '--requirepass', 'clusterpw', '--masterauth', 'clusterpw' ]);
my @primaries = cluster_primaries($c);
is(scalar @primaries, 3, 'cluster of 3 primaries is up');
for my $r (@{ $c->{nodes} })
{
	is(redis_cli($r, 'ACL', 'SETUSER', 'ec_worker', 'on', '>workerpw', '~*', 'resetchannels',
			'+ping', '+info', '+cluster|slots', '+asking', '+unlink', '+set', '+scan'),
		'OK', "ACL user on $r->{port}");
}

# the URL lists every primary as a seed
my $url = 'redis://ec_worker:workerpw@' . join(',', map { "127.0.0.1:$_" } @primaries);
my $node = new_node('primary', $c->{seed},
	conf => "entity_cache.mode = 'refresh'\nentity_cache.redis_url = '$url'\n");
ok(wait_until(sub { ec_status($node)->{redis_connected} eq 't' }), 'worker connected');
my $st = ec_status($node);
is($st->{cluster_nodes}, '3', 'status: 3 primaries in the slot map');
isnt($st->{cluster_slots_loaded_at}, '', 'status: slot map load time');

sub set_mode
{
	my ($mode) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET entity_cache.mode = '$mode'; SELECT pg_reload_conf()");
	# the postmaster forwards SIGHUP at once; the worker reloads before its next batch
	sleep 1;
}

# Fill the cache with every row's JSON through refresh mode; returns the
# rows as they were then.
sub fill_cache
{
	my ($what) = @_;
	set_mode('refresh');
	$node->safe_psql('postgres', 'UPDATE app.entity SET label = label');
	ok(wait_for_sync($node), "$what: refresh applied");
	my $rows = row_jsons($node);
	my $cache = cluster_dump($c, 'entity:metadata:*');
	is(scalar(grep { ($cache->{"entity:metadata:$_"} // '') eq $rows->{$_} } keys %$rows),
		$ncodes, "$what: every key holds its row's JSON, on the primary of its slot");
	set_mode('delete');
	return $rows;
}

# --- keys over every primary, refresh then delete
$node->safe_psql('postgres', qq{
INSERT INTO app.entity (code, label) SELECT 'c' || g, 'L' || g FROM generate_series(1, $ncodes) g});
ok(wait_for_sync($node), 'inserts applied');
my $rows = row_jsons($node);
for my $port (@primaries)
{
	my ($r) = grep { $_->{port} == $port } @{ $c->{nodes} };
	cmp_ok(redis_count($r, 'entity:metadata:*'), '>', 200, "primary $port holds its share of the keys");
}
is(ec_status($node)->{cluster_redirections}, '0',
	'no redirection: every key went straight to the owner of its slot');
my $cache = cluster_dump($c, 'entity:metadata:*');
is(scalar(grep { ($cache->{"entity:metadata:$_"} // '') eq $rows->{$_} } keys %$rows),
	$ncodes, 'refresh mode: every key holds its row JSON');

# 20,000 keys in one commit: twenty full batches, ~1,000 commands each
sub count_all
{
	my ($glob) = @_;
	my $n = 0;
	for my $port (cluster_primaries($c))
	{
		$n += redis_count((grep { $_->{port} == $port } @{ $c->{nodes} })[0], $glob);
	}
	return $n;
}
$node->safe_psql('postgres',
	"INSERT INTO app.entity (code, label) SELECT 'b' || g, 'B' FROM generate_series(1, 20000) g");
ok(wait_for_sync($node, 120), '20,000 inserts applied');
is(count_all('entity:metadata:b*'), 20000, 'refresh mode: 20,000 keys SET over the primaries');
$node->safe_psql('postgres', "DELETE FROM app.entity WHERE code LIKE 'b%'");
ok(wait_for_sync($node, 120), '20,000 deletes applied');
is(count_all('entity:metadata:b*'), 0, 'their keys removed');

set_mode('delete');
$node->safe_psql('postgres', "UPDATE app.entity SET label = 'x' || label");
ok(wait_for_sync($node), 'updates applied');
is(scalar keys %{ cluster_dump($c, 'entity:*') }, 0, 'delete mode: every key removed from every primary');

# --- hash tags: a key per row in the slot of its code, and a group key
# template whose keys all share one slot (one multi-key UNLINK)
$node->safe_psql('postgres', q{
SELECT entity_cache.watch('app.entity', 'entity:{{{code}}}:meta');
SELECT entity_cache.watch('app.entity', 'grp:{{all}}:{code}')});
is(cluster_cli($c, 'CLUSTER', 'KEYSLOT', 'entity:{c7}:meta'), cluster_cli($c, 'CLUSTER', 'KEYSLOT', 'c7'),
	'a hash-tagged key is in its tag\'s slot');
for my $i (1 .. 40)
{
	cluster_cli($c, 'SET', "entity:{c$i}:meta", 'stale');
	cluster_cli($c, 'SET', "grp:{all}:c$i", 'stale');
}
cluster_cli($c, 'SET', 'other:{all}:keep', 'keep');
$node->safe_psql('postgres', "UPDATE app.entity SET label = 'y' || label WHERE code IN ("
	  . join(',', map { "'c$_'" } 1 .. 40) . ")");
ok(wait_for_sync($node), 'hash-tagged updates applied');
is(scalar keys %{ cluster_dump($c, 'entity:{*') }, 0, 'hash-tagged keys removed');
is(scalar keys %{ cluster_dump($c, 'grp:*') }, 0, 'keys of one slot removed');
is(cluster_cli($c, 'GET', 'other:{all}:keep'), 'keep', 'a key of the same slot outside the templates kept');

# --- flush_all(): every matching key on every primary, nothing else
for my $i (1 .. 30)
{
	cluster_cli($c, 'SET', "entity:metadata:gone$i", 'x');
	cluster_cli($c, 'SET', "entity:{gone$i}:meta", 'x');
	cluster_cli($c, 'SET', "keep:$i", 'x');
}
$node->safe_psql('postgres', 'SELECT entity_cache.flush_all()');
ok(wait_for_sync($node), 'flush applied');
is(scalar keys %{ cluster_dump($c, 'entity:*') }, 0, 'flush_all: no matching key left on any primary');
is(scalar keys %{ cluster_dump($c, 'keep:*') }, 30, 'flush_all: other keys kept');
is(cluster_cli($c, 'GET', 'other:{all}:keep'), 'keep', 'flush_all: other key of a template slot kept');
$node->safe_psql('postgres', q{
SELECT entity_cache.unwatch('app.entity');
SELECT entity_cache.watch('app.entity', 'entity:metadata:{code}')});

# --- a fault under 500 writes/s: 0 lost, 0 stale
sub under_load
{
	my ($what, $seconds, $fault) = @_;
	my $before = fill_cache($what);
	my $load = start_update_load($node, $ncodes, 500, $seconds);
	sleep 2;
	$fault->();
	my $done = finish_update_load($load);
	cmp_ok($done, '>', 500, "$what: writes ran ($done)");
	ok(cluster_wait_ok($c), "$what: cluster_state:ok again");
	ok(wait_for_sync($node, 120), "$what: sync() after the load");
	my ($lost, $stale) = lost_and_stale($before, row_jsons($node),
		cluster_dump($c, 'entity:metadata:*'), 'entity:metadata:');
	is($lost, 0, "$what: 0 lost invalidations");
	is($stale, 0, "$what: 0 stale keys");
	note sprintf('%s: %d writes, lost %d, stale %d, redirections so far %s',
		$what, $done, $lost, $stale, ec_status($node)->{cluster_redirections});
}

sub node_id
{
	my ($port) = @_;
	my ($r) = grep { $_->{port} == $port } @{ $c->{nodes} };
	return redis_cli($r, 'CLUSTER', 'MYID');
}

under_load('reshard', 15, sub {
	my ($from, $to) = (node_id($primaries[0]), node_id($primaries[1]));
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'redis-cli', '--no-auth-warning', '-a', $c->{password},
			'--cluster', 'reshard', "127.0.0.1:$primaries[0]",
			'--cluster-from', $from, '--cluster-to', $to,
			'--cluster-slots', '2000', '--cluster-yes' ],
		'>', \$out, '2>', \$err);
	ok($ok, '2,000 slots resharded') or diag "$out\n$err";
});
cmp_ok(ec_status($node)->{cluster_redirections}, '>', 0, 'reshard: redirections followed');

under_load('failover', 20, sub {
	# a replica of the second primary takes over, cleanly
	my $victim = $primaries[1];
	my @reps = grep { redis_cli($_, 'ROLE') =~ /^slave\n127\.0\.0\.1\n$victim\n/ } @{ $c->{nodes} };
	ok(@reps, 'a replica of the primary on ' . $victim);
	is(redis_cli($reps[0], 'CLUSTER', 'FAILOVER'), 'OK', 'CLUSTER FAILOVER');
	ok(wait_until(sub { redis_cli($reps[0], 'ROLE') =~ /^master/ }, 30), 'replica promoted');
	# every node knows the new primary before the next fault
	ok(cluster_wait_ok($c), 'cluster agrees on the promotion');
	# the third primary dies: its replica is elected after node_timeout
	my $dead_port = $primaries[2];
	my ($dead) = grep { $_->{port} == $dead_port } @{ $c->{nodes} };
	my ($heir) = grep { redis_cli($_, 'ROLE') =~ /^slave\n127\.0\.0\.1\n$dead_port\n/ } @{ $c->{nodes} };
	ok($heir, "a replica of the primary on $dead_port");
	kill 'KILL', $dead->{pid};
	delete $dead->{pid};
	# On a loaded machine the election has been seen to stall (the replica
	# never asks for votes); the worker's side is what is tested, so the
	# replica is then told to take over, and the stall is shown.
	unless (wait_until(sub { redis_cli($heir, 'ROLE') =~ /^master/ }, 30))
	{
		my @log = split /^/m, PostgreSQL::Test::Utils::slurp_file("$heir->{dir}/redis.log");
		diag "no election 30 s after kill -9; the replica's log ends:\n"
		  . join('', @log[ ($#log > 15 ? $#log - 15 : 0) .. $#log ]);
		redis_cli($heir, 'CLUSTER', 'FAILOVER', 'TAKEOVER');
	}
	my $replaced = sub { my @p = cluster_primaries($c); @p == 3 && cluster_wait_ok($c, 1) };
	unless (wait_until($replaced, 60))
	{
		# Seen once on a loaded machine: after the election one slot had
		# no owner (cluster_slots_assigned:16383), for good.  That is Redis
		# Cluster's own state, not the worker's: show every node's view,
		# let redis-cli assign the slot, and test the worker from there.
		diag "the cluster did not recover by itself; the nodes' views:\n"
		  . join('', map { "node $_->{port}:\n" . redis_cli($_, 'CLUSTER', 'NODES') . "\n" }
			  grep { $_->{pid} } @{ $c->{nodes} });
		my ($out, $err) = ('', '');
		IPC::Run::run([ 'redis-cli', '--no-auth-warning', '-a', $c->{password},
				'--cluster', 'fix', "127.0.0.1:$primaries[0]", '--cluster-yes' ],
			'>', \$out, '2>', \$err);
		diag "redis-cli --cluster fix:\n$out$err";
	}
	ok(wait_until($replaced, 60), 'a replica replaced the killed primary');
});

# --- over TLS: rediss:// to a cluster whose nodes, bus and replication
# all speak TLS only; the worker checks their certificate against the CA
my $certs = make_test_certs(PostgreSQL::Test::Utils::tempdir('certs'));
my $tc = start_redis_cluster(primaries => 3, replicas => 0,
	tls => { cert => $certs->{server}, key => $certs->{server_key}, ca => $certs->{ca} });
my @tprimaries = cluster_primaries($tc);
$node->safe_psql('postgres', "ALTER SYSTEM SET entity_cache.redis_url = 'rediss://127.0.0.1:$tprimaries[0]';
	ALTER SYSTEM SET entity_cache.redis_tls_ca_file = '$certs->{ca}';
	ALTER SYSTEM SET entity_cache.mode = 'refresh'; SELECT pg_reload_conf()");
ok(wait_until(sub { my $s = ec_status($node); $s->{redis_tls} eq 't' && $s->{cluster_nodes} eq '3' }),
	'TLS: the worker serves the TLS cluster');
$node->safe_psql('postgres', 'UPDATE app.entity SET label = label');
ok(wait_for_sync($node), 'TLS: refresh applied');
$rows = row_jsons($node);
$cache = cluster_dump($tc, 'entity:metadata:*');
is(scalar(grep { ($cache->{"entity:metadata:$_"} // '') eq $rows->{$_} } keys %$rows),
	$ncodes, 'TLS: every key SET on the primary of its slot');
set_mode('delete');
$node->safe_psql('postgres', "UPDATE app.entity SET label = 't' || label");
ok(wait_for_sync($node), 'TLS: updates applied');
is(scalar keys %{ cluster_dump($tc, 'entity:*') }, 0, 'TLS: every key removed');

note sprintf('t/090 took %.0f s', time() - $t0);
$node->stop;
done_testing();
