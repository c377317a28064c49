# Fault harness: a steady write load (pgbench, 300 tx/s of single-row
# UPDATEs over 1,000 codes) with one fault injected at a time, then the
# promise "no stale key survives a committed write": once the load stops
# and entity_cache.sync() returns true, every cached value equals the row's
# current JSON.
#
# Faults, each on a freshly filled cache:
#   redis_restart_aof  Redis stopped ~5 s during the load, restarted from its
#                      append-only file (the stale values come back from disk)
#   redis_sigstop      Redis frozen with SIGSTOP ~3 s (redis_timeout 500 ms)
#   worker_kill9_x2    the worker SIGKILLed twice; the postmaster restarts the
#                      cluster each time (restart_after_crash = on)
#   pg_immediate_stop  Redis down, writes, PostgreSQL stopped in immediate
#                      mode with that backlog, started again, Redis back
#
# Readers: no concurrent cache-aside refiller.  A refiller that reads a row,
# loses the race to a write plus its invalidation, then SETs what it read,
# leaves a stale key by design of cache-aside in delete mode, which would
# hide the failures this harness looks for.  Instead, before each fault,
# with the load stopped and the queue drained, the cache is filled with
# every row's current row_to_json(e)::text (one query + redis-cli --pipe), so
# every key starts out fresh and comparable, and only a lost invalidation can
# leave a value that differs from the row.
#
# The load is a Perl driver started with IPC::Run::start that runs pgbench
# in 1-second segments (-c 2 -R 300 -T 1) until its duration is over, so it
# keeps writing across server restarts (a pgbench client whose connection
# dies aborts for good).  "failed" counts transactions in flight in an
# aborted pgbench client plus refused connection attempts (one per 100 ms
# while the server is down).  Only the two PostgreSQL-restart faults may
# fail writes; they are counted and reported separately.
#
# One result line per fault goes to note() and to
# $PostgreSQL::Test::Utils::tmp_check/fault_results.txt: writes attempted,
# writes failed, stale keys after the final sync, drain_s (the time
# entity_cache.sync() takes when called right as the fault ends, load still
# running: the fault's backlog reaching Redis) and final_sync_s (the sync
# after the load stopped).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time sleep);
use File::Find;
use EntityCacheTest;

my $ncodes = 1000;
my $t_start = time();

my $redis = start_redis(persist => 1);
# the test framework turns restart_after_crash off; production default is on
my $node = new_node('faults', $redis,
	conf => "entity_cache.redis_timeout = 500\nrestart_after_crash = on\n");

$node->safe_psql('postgres', qq{
INSERT INTO app.entity (code, label) SELECT 'c' || g, 'L' || g FROM generate_series(1, $ncodes) g});
ok(wait_until(sub { ec_status($node)->{redis_connected} eq 't' }), 'worker connected');
ok(wait_for_sync($node), 'initial rows applied');

my $script = "$PostgreSQL::Test::Utils::tmp_check/fault_update.sql";
open my $sfh, '>', $script or die "$script: $!";
print $sfh q{\set id random(1, } . $ncodes . q{)
UPDATE app.entity SET label = 'w' || :id || '-' || md5(random()::text), modified_ts = clock_timestamp() WHERE code = 'c' || :id;
};
close $sfh;

my $results_file = "$PostgreSQL::Test::Utils::tmp_check/fault_results.txt";
open my $rfh, '>', $results_file or die "$results_file: $!";
my $header = sprintf "%-18s %9s %7s %6s %13s %13s",
  'fault', 'attempted', 'failed', 'stale', 'drain_s', 'final_sync_s';
print $rfh "$header\n";
note $header;

# the load driver, run as a separate perl process
my $driver = q{
use strict; use warnings; use Time::HiRes qw(time sleep);
my ($dur, $host, $port, $script) = @ARGV;
my $end = time() + $dur;
my ($processed, $failed, $connfail, $aborted, $segments) = (0, 0, 0, 0, 0);
while ($end - time() > 0.3)
{
	my $out = `pgbench -n -h '$host' -p $port -c 2 -j 1 -R 300 -T 1 -f '$script' postgres 2>&1`;
	$segments++;
	if ($out =~ /number of transactions actually processed: (\d+)/)
	{
		$processed += $1;
		$failed += $1 if $out =~ /number of failed transactions: (\d+)/;
		my $a = () = $out =~ /client \d+ aborted/g;
		$aborted += $a;
		$failed += $a;
	}
	else
	{
		# no connection: one attempted write refused
		$connfail++;
		$failed++;
		sleep 0.1;
	}
}
print "processed=$processed failed=$failed aborted=$aborted connfail=$connfail segments=$segments\n";
};

sub start_load
{
	my ($dur) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'perl', '-e', $driver, $dur, $node->host, $node->port, $script ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, t0 => time() };
}

sub finish_load
{
	my ($l) = @_;
	$l->{h}->finish;
	my $out = ${ $l->{out} };
	diag("load driver stderr: ${ $l->{err} }") if ${ $l->{err} } ne '';
	my %r = $out =~ /(\w+)=(\d+)/g;
	die "load driver printed no result: $out" unless defined $r{processed};
	note "load: $out";
	return \%r;
}

# sleep until $t seconds after the load started
sub at
{
	my ($l, $t) = @_;
	my $left = $l->{t0} + $t - time();
	sleep($left) if $left > 0;
}

# every row's current JSON: { code => json }
sub rows_json
{
	my %rows;
	for (split /\n/, $node->safe_psql('postgres',
		q{SELECT code || E'\t' || row_to_json(e)::text FROM app.entity e}))
	{
		my ($c, $j) = split /\t/, $_, 2;
		$rows{$c} = $j;
	}
	return \%rows;
}

sub resp { my @a = @_; return '*' . @a . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @a) }

# the cache filled with every row's current JSON, EX 300
sub fill_cache
{
	my $rows = rows_json();
	my $in = join '', map { resp('SET', "entity:metadata:$_", $rows->{$_}, 'EX', '300') } sort keys %$rows;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'redis-cli', '-h', '127.0.0.1', '-p', $redis->{port}, '--pipe' ],
		'<', \$in, '>', \$out, '2>', \$err);
	is(redis_count($redis, 'entity:metadata:c*'), $ncodes, "cache filled with $ncodes rows");
	return $rows;
}

# keys whose cached value differs from the row's current JSON
sub count_stale
{
	my ($name) = @_;
	my $rows = rows_json();
	my $cached = redis_cli($redis, 'EVAL', q{
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('GET', 'entity:metadata:c' .. i)
  if v then table.insert(out, 'c' .. i .. '\t' .. v) end
end
return out}, '0', $ncodes);
	my ($stale, $present) = (0, 0);
	for (split /\n/, $cached)
	{
		my ($c, $v) = split /\t/, $_, 2;
		$present++;
		next if defined $rows->{$c} && $rows->{$c} eq $v;
		$stale++;
		diag("$name: stale $c: cached $v, row " . ($rows->{$c} // 'none')) if $stale <= 3;
	}
	note "$name: $present keys cached after sync, $stale stale";
	return $stale;
}

# right at the end of the fault, with the load still running:
# entity_cache.sync() waits for everything committed so far, the whole
# backlog of the fault included; the seconds it took
sub drain_after_fault
{
	my ($name) = @_;
	my $t0 = time();
	is($node->safe_psql('postgres', "SELECT entity_cache.sync('60 s')"), 't',
		"$name: sync right after the fault, under load");
	return time() - $t0;
}

# after the load: sync, count stale keys, report
sub check_and_report
{
	my ($name, $load, $drain, %opts) = @_;
	my $load_end = time();
	is($node->safe_psql('postgres', "SELECT entity_cache.sync('60 s')"), 't', "$name: sync");
	my $t_sync = time();
	my $stale = count_stale($name);
	my $attempted = $load->{processed} + $load->{failed};
	my $line = sprintf "%-18s %9d %7d %6d %13.2f %13.2f",
	  $name, $attempted, $load->{failed}, $stale, $drain, $t_sync - $load_end;
	$line .= '  (failures: PostgreSQL restart window)' if $opts{may_fail};
	print $rfh "$line\n";
	note $line;
	is($stale, 0, "$name: no stale key after sync");
	cmp_ok($load->{processed}, '>', 1000, "$name: the load ran ($load->{processed} writes)");
	if ($opts{may_fail})
	{
		note "$name: $load->{failed} writes failed while PostgreSQL restarted (counted separately)";
	}
	else
	{
		is($load->{failed}, 0, "$name: no write failed");
	}
	my $st = ec_status($node);
	is($st->{queue_depth}, '0', "$name: queue empty");
}

# worker pid, '' if none or the server does not answer
sub try_worker_pid
{
	my ($ret, $out) = $node->psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'entity_cache worker'");
	return $ret == 0 ? $out : '';
}

sub aof_contains
{
	my ($needle) = @_;
	my $found = 0;
	find(sub {
		return unless -f $_ && /aof/;
		$found = 1 if index(slurp_file($_), $needle) >= 0;
	}, $redis->{dir});
	return $found;
}

#
# 1. Redis stopped for ~5 s, restarted from its AOF
#
{
	my $name = 'redis_restart_aof';
	my $rows = fill_cache();
	ok(aof_contains($rows->{"c$ncodes"}), "$name: the filled values are in the AOF");
	redis_cli($redis, 'SET', 'fault:marker', 'keep');
	my $load = start_load(10);
	at($load, 2);
	stop_redis($redis);
	at($load, 7);
	restart_redis($redis);
	is(redis_cli($redis, 'GET', 'fault:marker'), 'keep', "$name: Redis came back with its data from disk");
	note "$name: " . redis_count($redis, 'entity:metadata:c*') . ' entity keys back from disk';
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain);
}

#
# 2. Redis frozen (SIGSTOP) for ~3 s, past redis_timeout = 500 ms
#
{
	my $name = 'redis_sigstop';
	fill_cache();
	my $load = start_load(8);
	at($load, 2);
	kill 'STOP', $redis->{pid};
	at($load, 5);
	kill 'CONT', $redis->{pid};
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain);
}

#
# 3. the worker SIGKILLed twice; each time the cluster restarts
#
{
	my $name = 'worker_kill9_x2';
	fill_cache();
	my $load = start_load(12);
	for my $t (2, 6)
	{
		at($load, $t);
		my $pid = try_worker_pid();
		ok($pid, "$name: worker pid $pid before kill at ${t}s");
		kill 'KILL', $pid;
		my $new;
		ok(wait_until(sub { $new = try_worker_pid(); $new ne '' && $new ne $pid }, 30),
			"$name: a new worker runs after the kill at ${t}s");
	}
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain, may_fail => 1);
}

#
# 4. Redis down, writes, PostgreSQL immediate stop with that backlog, start,
#    Redis back
#
{
	my $name = 'pg_immediate_stop';
	fill_cache();
	stop_redis($redis);
	my $load = start_load(10);
	at($load, 3);
	my $depth = ec_status($node)->{queue_depth};
	cmp_ok($depth, '>', 0, "$name: backlog of $depth keys before the immediate stop");
	$node->stop('immediate');
	$node->start;
	at($load, 6);
	restart_redis($redis);
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain, may_fail => 1);
}

# the checker itself: a planted stale value is found
redis_cli($redis, 'SET', 'entity:metadata:c1', '{"stale":true}');
is(count_stale('self_check'), 1, 'the staleness check finds a planted stale key');

close $rfh;
note sprintf 'fault harness total run time %.1f s', time() - $t_start;
$node->stop;
done_testing();
