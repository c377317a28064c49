# Redis Sentinel: one master, one replica, three sentinels on loopback.
# The worker finds the master through redis-sentinel://, and follows two
# failovers while pgbench runs ~500 single-row UPDATEs a second:
#   1. SENTINEL FAILOVER (the replica promoted, the master demoted)
#   2. the master killed with kill -9; the sentinels promote the replica
# After each: 0 failed writes, 0 lost invalidations (a code written during
# the load whose key still holds the value cached before), 0 stale keys
# (a cached value that differs from its row) once sync() returns true; the
# time from the fault to the worker's first batch applied on the new
# master is printed (note) and written to tmp_check/sentinel_results.txt.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep usleep);
use EntityCacheTest;

my $ncodes = 1000;
my $rate = 500;
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

my $m = start_redis();
my $r = start_redis(extra => [ '--replicaof', '127.0.0.1', $m->{port} ]);
my %by_port = ($m->{port} => $m, $r->{port} => $r);

# sentinels: redis-server <conf> --sentinel, with a config file of their own
# (they rewrite it); quick failure detection so the test is quick
my @sentinels;
for my $i (1 .. 3)
{
	my $s = { port => PostgreSQL::Test::Cluster::get_free_port(),
		dir => PostgreSQL::Test::Utils::tempdir("sentinel$i") };
	open my $fh, '>', "$s->{dir}/sentinel.conf" or die;
	print $fh <<"EOC";
port $s->{port}
bind 127.0.0.1
daemonize yes
pidfile $s->{dir}/sentinel.pid
logfile $s->{dir}/sentinel.log
dir $s->{dir}
sentinel monitor mymaster 127.0.0.1 $m->{port} 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
sentinel parallel-syncs mymaster 1
EOC
	close $fh;
	system('redis-server', "$s->{dir}/sentinel.conf", '--sentinel') == 0
	  or die "could not start a sentinel";
	ok(wait_until(sub { redis_cli($s, 'PING') eq 'PONG' }, 10), "sentinel $i answers");
	push @sentinels, $s;
}

END
{
	for my $s (@sentinels)
	{
		next unless open my $fh, '<', "$s->{dir}/sentinel.pid";
		chomp(my $pid = <$fh> // '');
		kill 'TERM', $pid if $pid;
	}
}

sub master_port
{
	my ($addr, $port) = split /\n/, redis_cli($sentinels[0], 'SENTINEL', 'get-master-addr-by-name', 'mymaster');
	return $port // '';
}

# every sentinel knows the replica and the other sentinels
ok(wait_until(sub {
	!grep {
		redis_cli($_, 'SENTINEL', 'master', 'mymaster') !~ /num-other-sentinels\n2\n/
		  || redis_cli($_, 'SENTINEL', 'replicas', 'mymaster') !~ /\b$r->{port}\b/
	} @sentinels
}, 30), 'the sentinels know the replica and each other');

my $url = 'redis-sentinel://' . join(',', map { "127.0.0.1:$_->{port}" } @sentinels) . '/0?master=mymaster';
my $node = new_node('sentinel', $m, conf => "entity_cache.redis_url = '$url'\n");
$node->safe_psql('postgres',
	"INSERT INTO app.entity (code, label) SELECT 'c' || g, 'L' || g FROM generate_series(1, $ncodes) g");
ok(wait_for_sync($node), 'initial rows applied through the sentinels');
my $st = ec_status($node);
is($st->{redis_node}, "127.0.0.1:$m->{port}", 'status.redis_node is the master the sentinels name');
is($st->{redis_tls}, 'f', 'status.redis_tls is false');

my $script = "$tmp/sentinel_update.sql";
open my $sfh, '>', $script or die;
print $sfh "\\set id random(1, $ncodes)\n"
  . "UPDATE app.entity SET label = 'w' || :id || '-' || md5(random()::text) WHERE code = 'c' || :id;\n";
close $sfh;

sub rows_json
{
	my %rows;
	for (split /\n/, $node->safe_psql('postgres', q{SELECT code || E'\t' || row_to_json(e)::text FROM app.entity e}))
	{
		my ($c, $j) = split /\t/, $_, 2;
		$rows{$c} = $j;
	}
	return \%rows;
}

sub resp { my @a = @_; return '*' . @a . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @a) }

# every row's JSON cached on $master, replicated before the fault
sub fill_cache
{
	my ($master) = @_;
	my $rows = rows_json();
	my $in = join '', map { resp('SET', "entity:metadata:$_", $rows->{$_}) } sort keys %$rows;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'redis-cli', '-h', '127.0.0.1', '-p', $master->{port}, '--pipe' ],
		'<', \$in, '>', \$out, '2>', \$err);
	is(redis_cli($master, 'WAIT', '1', '5000'), '1', 'cache filled and replicated');
	return $rows;
}

# { code => value } of every cached key on $master
sub cached
{
	my ($master) = @_;
	my %c;
	for (split /\n/, redis_cli($master, 'EVAL', q{
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('GET', 'entity:metadata:c' .. i)
  if v then table.insert(out, 'c' .. i .. '\t' .. v) end
end
return out}, '0', $ncodes))
	{
		my ($k, $v) = split /\t/, $_, 2;
		$c{$k} = $v;
	}
	return \%c;
}

# Run the load, inject the fault at 3 s, measure the switch, check.
sub failover_case
{
	my ($name, $fault) = @_;
	my $old = $by_port{ master_port() };
	my $new = $old == $m ? $r : $m;
	my $pre = fill_cache($old);
	my $e0 = ec_status($node)->{errors_total};
	my ($out, $err) = ('', '');
	my $load = IPC::Run::start([ 'pgbench', '-n', '-h', $node->host, '-p', $node->port,
		'-c', '2', '-j', '1', '-R', $rate, '-T', '14', '-f', $script, 'postgres' ],
		'>', \$out, '2>', \$err);
	sleep 3;
	my $t_fault = time();
	$fault->($old);

	# poll status: the switch of node, then the first batch applied there
	my ($t_node, $t_applied, $applied_at_switch);
	my $deadline = $t_fault + 60;
	while (time() < $deadline && !defined $t_applied)
	{
		my $s = ec_status($node);
		if (!defined $t_node && $s->{redis_node} eq "127.0.0.1:$new->{port}")
		{
			$t_node = time();
			$applied_at_switch = $s->{applied_total};
		}
		$t_applied = time() if defined $t_node && $s->{applied_total} > $applied_at_switch;
		usleep(10_000);
	}
	ok(defined $t_node, "$name: the worker connected to the new master");
	ok(defined $t_applied, "$name: and applied a batch there");
	$load->finish;
	my ($done) = $out =~ /number of transactions actually processed: (\d+)/;
	my ($failed) = $out =~ /number of failed transactions: (\d+)/;
	$failed //= 0;
	cmp_ok($done // 0, '>', $rate * 8, "$name: the load ran ($done writes)");
	is($failed, 0, "$name: 0 failed writes");
	my $aborted = () = $out =~ /aborted/g;
	is($aborted, 0, "$name: no pgbench client aborted");

	ok(wait_for_sync($node, 60), "$name: sync() after the load");
	my $rows = rows_json();
	my $c = cached($new);
	my $stale = grep { $c->{$_} ne $rows->{$_} } keys %$c;
	my $lost = grep { $rows->{$_} ne $pre->{$_} && defined $c->{$_} && $c->{$_} eq $pre->{$_} } keys %$rows;
	my $written = grep { $rows->{$_} ne $pre->{$_} } keys %$rows;
	cmp_ok($written, '>', 100, "$name: $written codes written during the load");
	is($lost, 0, "$name: 0 lost invalidations");
	is($stale, 0, "$name: 0 stale keys");
	my $st = ec_status($node);
	my $line = sprintf "%-18s writes=%d failed=%d lost=%d stale=%d fault_to_new_master_s=%.2f fault_to_first_invalidation_s=%.2f errors=%d",
	  $name, $done // 0, $failed, $lost, $stale, ($t_node // time()) - $t_fault,
	  ($t_applied // time()) - $t_fault, $st->{errors_total} - $e0;
	note $line;
	diag $line;
	open my $fh, '>>', "$tmp/sentinel_results.txt" or die;
	print $fh "$line\n";
	close $fh;
	return $new;
}

# 1. a manual failover: the replica promoted, the old master demoted
my $new = failover_case('sentinel_failover', sub {
	redis_cli($sentinels[0], 'SENTINEL', 'FAILOVER', 'mymaster');
});
is(master_port(), $r->{port}, 'SENTINEL FAILOVER: the sentinels name the replica');

# the demoted master follows the new one before the next fault
ok(wait_until(sub {
	redis_cli($r, 'INFO', 'replication') =~ /slave0:.*port=$m->{port},state=online/
}, 30), 'the old master is now an online replica');

# 2. the master killed: the sentinels notice and promote the replica
failover_case('master_kill9', sub {
	my ($old) = @_;
	kill 'KILL', $old->{pid};
	delete $old->{pid};
});
is(master_port(), $m->{port}, 'kill -9: the sentinels promoted the replica');

ok(!$node->log_contains(qr/terminated by signal/), 'no process crashed');
$node->stop;
done_testing();
