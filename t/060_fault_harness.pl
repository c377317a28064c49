# Fault harness: a steady write load (pgbench, 500 single-row UPDATEs per
# second over 1,000 codes) and cache-aside readers re-filling the cache,
# with one fault injected at a time, then the promise "no stale key
# survives a committed write": once the load stops and entity_cache.sync()
# returns true, every cached value equals the row's current JSON.
#
# Faults, each on a freshly filled cache:
#   redis_restart_aof    Redis stopped 60 s during the load, restarted from
#                        its append-only file (the stale values come back
#                        from disk)
#   redis_restart_empty  Redis stopped 60 s, its data files removed,
#                        restarted empty
#   redis_sigstop        Redis frozen with SIGSTOP ~3 s (redis_timeout 500 ms)
#   worker_kill9_x2      the worker SIGKILLed twice; the postmaster restarts
#                        the cluster each time (restart_after_crash = on)
#   pg_immediate_stop    Redis down, writes, PostgreSQL stopped in immediate
#                        mode with that backlog, started again, Redis back
#   standby_promotion    a streaming standby (same Redis) is made; Redis
#                        down, the primary queues a backlog and is stopped in
#                        fast mode (all its WAL reaches the standby); Redis
#                        back while the standby is still in recovery: it
#                        sends nothing; then it is promoted, the load and
#                        the readers move to it, its worker drains what the
#                        old primary left
#   redis_password       requirepass set on Redis and every client dropped:
#                        the worker fails to authenticate (rows kept), then
#                        ALTER SYSTEM SET entity_cache.redis_password +
#                        pg_reload_conf(); afterwards back to no password
#
# Writes: a Perl driver started with IPC::Run::start runs pgbench in
# 1-second segments (-c 2 -R 500 -T 1) until its duration is over, so it
# keeps writing across server restarts (a pgbench client whose connection
# dies aborts for good).  Each segment reads the server's host and port
# from a file, so the load follows a promotion.  "failed" counts
# transactions in flight in an aborted pgbench client plus refused
# connection attempts (one per 100 ms while no server accepts).  Only the
# faults that stop or restart PostgreSQL may fail writes; they are counted
# and reported separately.
#
# Readers: two Perl processes, 150 reads/s each over the 1,000 codes, in
# the lease form of cache-aside, which stays race-free against an
# invalidator that deletes keys.  GET; on a miss, SET key "lease:<random>"
# NX PX 2000; if that took, SELECT row_to_json(e)::text of the row (one
# psql kept open per reader, reopened when the server goes away), then a
# Lua script SETs the value EX 300 only if the key still holds the lease.
# A write that commits after the SELECT's snapshot has its UNLINK sent
# after that commit, so after the lease was set: the UNLINK deletes the
# lease and the outdated value is never written.  (Plain cache-aside,
# GET miss -> SELECT -> SET, can write a value read just before a commit
# after that commit's invalidation, a stale key that no invalidator can
# prevent.)  A lease read by another reader is a miss that does not fill.
# The readers reconnect to Redis and PostgreSQL after any error (counted,
# never fatal), take the Redis password from a file and the server's port
# from the load's file.
#
# After each fault: the load and the readers stop, sync() returns true, the
# readers' leases expire (PX 2000), then every cached key is compared with
# the table:
#   stale  keys whose value differs from the row (leftover leases included)
#   lost   codes written during the load whose key still holds the JSON the
#          cache was filled with before the fault: a committed write whose
#          invalidation never arrived
# Both must be 0.
#
# One result line per fault goes to note() and to
# $PostgreSQL::Test::Utils::tmp_check/fault_results.txt: writes attempted,
# writes failed, lost, stale, drain_s (the time entity_cache.sync() takes
# when called right as the fault ends, load still running: the fault's
# backlog reaching Redis; for the promotion, counted from the promote
# request), reads (GETs Redis answered) and fills by the readers, and
# final_sync_s
# (the sync after the load stopped).
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
my $write_rate = 500;    # pgbench -R
my $nreaders = 2;
my $read_rate = 150;     # per reader
my $outage = 60;         # seconds Redis is down in the two restart faults
my $t_start = time();
my $tmp = $PostgreSQL::Test::Utils::tmp_check;
my $target_file = "$tmp/fault_target";            # "host port" of the primary
my $password_file = "$tmp/fault_redis_password";  # the readers' Redis password

# EC_FAULT_TLS=1 (t/061_fault_harness_tls.pl): the worker reaches Redis
# over rediss://, the server's certificate checked against a test CA; the
# readers and the checks use the same server's plaintext port
my $tls = $ENV{EC_FAULT_TLS};
my $certs = $tls ? make_test_certs(PostgreSQL::Test::Utils::tempdir('certs')) : undef;
my $redis = start_redis(persist => 1, $tls ? (tls => { cert => $certs->{server},
	key => $certs->{server_key}, ca => $certs->{ca}, plain_port => 1 }) : ());
# the test framework turns restart_after_crash off; production default is on
# the cache is filled and values planted right after applications: no
# redelete (new_node's default)
my $node = new_node('primary', $redis, init => { allows_streaming => 1 },
	conf => "entity_cache.redis_timeout = 500\nrestart_after_crash = on\n");

sub write_file
{
	my ($path, $text) = @_;
	open my $fh, '>', "$path.new" or die "$path.new: $!";
	print $fh $text;
	close $fh or die "$path.new: $!";
	rename "$path.new", $path or die "$path: $!";
}

sub set_target { my ($n) = @_; write_file($target_file, $n->host . ' ' . $n->port . "\n") }
set_target($node);
write_file($password_file, '');

$node->safe_psql('postgres', qq{
INSERT INTO app.entity (code, label) SELECT 'c' || g, 'L' || g FROM generate_series(1, $ncodes) g});
ok(wait_for_worker($node), 'worker connected');
is(ec_status($node)->{redis_tls}, $tls ? 't' : 'f', 'worker connected ' . ($tls ? 'over TLS' : 'in plaintext'));
ok(wait_for_sync($node), 'initial rows applied');

my $script = "$tmp/fault_update.sql";
write_file($script, q{\set id random(1, } . $ncodes . q{)
UPDATE app.entity SET label = 'w' || :id || '-' || md5(random()::text), modified_ts = clock_timestamp() WHERE code = 'c' || :id;
});

my $results_file = "$tmp/fault_results.txt";
open my $rfh, '>', $results_file or die "$results_file: $!";
my $format = "%-19s %9s %6s %4s %5s %7s %6s %5s %12s";
my $header = sprintf $format,
  'fault', 'attempted', 'failed', 'lost', 'stale', 'drain_s', 'reads', 'fills', 'final_sync_s';
print $rfh "$header\n";
note $header;



sub start_proc
{
	my (@cmd) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(\@cmd, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

# the write load and the readers, for $dur seconds
sub start_load
{
	my ($dur) = @_;
	my %l = (t0 => time());
	$l{driver} = start_proc('perl', "$FindBin::RealBin/bin/fault_load.pl", $dur, $write_rate, $target_file, $script);
	$l{readers} = [ map {
		start_proc('perl', "$FindBin::RealBin/bin/fault_reader.pl", $dur, $read_rate, $ncodes, $redis->{port},
			$password_file, $target_file, "$PostgreSQL::Test::Utils::log_path/fault_reader_psql.log")
	} 1 .. $nreaders ];
	return \%l;
}

sub finish_proc
{
	my ($p, $what) = @_;
	$p->{h}->finish;
	my $out = ${ $p->{out} };
	diag("$what stderr: ${ $p->{err} }") if ${ $p->{err} } ne '';
	note "$what: $out";
	my %r = $out =~ /(\w+)=(\d+)/g;
	die "$what printed no result: $out" unless %r;
	return \%r;
}

# { processed, failed, ... of the driver; reads, hits, fills, ... summed }
sub finish_load
{
	my ($l) = @_;
	my $r = finish_proc($l->{driver}, 'load');
	for my $p (@{ $l->{readers} })
	{
		my $rr = finish_proc($p, 'reader');
		$r->{$_} += $rr->{$_} for keys %$rr;
	}
	return $r;
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

# the cache filled with every row's current JSON, EX 300 (load stopped,
# queue drained); returns those rows: the values from before the fault
sub fill_cache
{
	my $rows = rows_json();
	my $in = join '', map { resp('SET', "entity:metadata:$_", $rows->{$_}, 'EX', '300') } sort keys %$rows;
	my @auth = defined $redis->{password} ? ('--no-auth-warning', '-a', $redis->{password}) : ();
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'redis-cli', '-h', '127.0.0.1', '-p', $redis->{port}, @auth, '--pipe' ],
		'<', \$in, '>', \$out, '2>', \$err);
	is(redis_count($redis, 'entity:metadata:c*'), $ncodes, "cache filled with $ncodes rows");
	return $rows;
}

# { code => cached value } of every cached entity key
sub cached_values
{
	my $cached = redis_cli($redis, 'EVAL', q{
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('GET', 'entity:metadata:c' .. i)
  if v then table.insert(out, 'c' .. i .. '\t' .. v) end
end
return out}, '0', $ncodes);
	return { map { split /\t/, $_, 2 } split /\n/, $cached };
}

sub lease_count { scalar grep { /^lease:/ } values %{ cached_values() } }

# (stale, lost): keys whose cached value differs from the row's current
# JSON; of those, keys that still hold $pre's value (the JSON filled before
# the fault) although the row was written since
sub count_stale
{
	my ($name, $pre) = @_;
	my $rows = rows_json();
	my $cached = cached_values();
	my ($stale, $lost, $leases) = (0, 0, 0);
	for my $c (sort keys %$cached)
	{
		my $v = $cached->{$c};
		next if defined $rows->{$c} && $rows->{$c} eq $v;
		$stale++;
		$leases++ if $v =~ /^lease:/;
		$lost++ if defined $pre->{$c} && $pre->{$c} eq $v;
		diag("$name: stale $c: cached $v, row " . ($rows->{$c} // 'none')) if $stale <= 3;
	}
	note sprintf '%s: %d keys cached after sync, %d stale (%d of them leases), %d lost',
	  $name, scalar(keys %$cached), $stale, $leases, $lost;
	return ($stale, $lost);
}

# right at the end of the fault, with the load still running:
# entity_cache.sync() waits for everything committed so far, the whole
# backlog of the fault included; the seconds it took (counted from $t0 if
# given)
sub drain_after_fault
{
	my ($name, $t0) = @_;
	$t0 //= time();
	is($node->safe_psql('postgres', "SELECT entity_cache.sync('60 s')"), 't',
		"$name: sync right after the fault, under load");
	return time() - $t0;
}

# after the load: sync, let the leases expire, count stale and lost keys,
# report
sub check_and_report
{
	my ($name, $load, $drain, $pre, %opts) = @_;
	my $load_end = time();
	is($node->safe_psql('postgres', "SELECT entity_cache.sync('60 s')"), 't', "$name: sync");
	my $t_sync = time();
	ok(wait_until(sub { lease_count() == 0 }, 15), "$name: the readers' leases expired");
	my ($stale, $lost) = count_stale($name, $pre);
	my $attempted = $load->{processed} + $load->{failed};
	my $line = sprintf $format, $name, $attempted, $load->{failed}, $lost, $stale,
	  sprintf('%.2f', $drain), $load->{hits} + $load->{misses}, $load->{fills},
	  sprintf('%.2f', $t_sync - $load_end);
	$line .= '  (failures: PostgreSQL restart window)' if $opts{may_fail};
	print $rfh "$line\n";
	note $line;
	note "$name: readers: $load->{reads} reads tried, $load->{hits} hits, $load->{misses} misses, "
	  . "$load->{leases} leases taken, "
	  . "$load->{fills} fills, $load->{fill_skipped} fills skipped (lease deleted), "
	  . "$load->{redis_err} Redis errors, $load->{pg_err} PostgreSQL errors";
	is($lost, 0, "$name: no invalidation lost");
	is($stale, 0, "$name: no stale key after sync");
	cmp_ok($load->{processed}, '>', 1000, "$name: the load ran ($load->{processed} writes)");
	cmp_ok($load->{fills}, '>', 0, "$name: the readers filled the cache ($load->{fills} fills)");
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
# 1. Redis stopped for 60 s, restarted from its AOF
#
{
	my $name = 'redis_restart_aof';
	my $pre = fill_cache();
	ok(aof_contains($pre->{"c$ncodes"}), "$name: the filled values are in the AOF");
	redis_cli($redis, 'SET', 'fault:marker', 'keep');
	my $load = start_load($outage + 6);
	at($load, 2);
	stop_redis($redis);
	at($load, 2 + $outage);
	restart_redis($redis);
	is(redis_cli($redis, 'GET', 'fault:marker'), 'keep', "$name: Redis came back with its data from disk");
	note "$name: " . redis_count($redis, 'entity:metadata:c*') . ' entity keys back from disk';
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain, $pre);
}

#
# 2. Redis stopped for 60 s, restarted empty
#
{
	my $name = 'redis_restart_empty';
	my $pre = fill_cache();
	redis_cli($redis, 'SET', 'fault:marker', 'keep');
	my $load = start_load($outage + 6);
	at($load, 2);
	stop_redis($redis);
	at($load, 2 + $outage);
	restart_redis($redis, empty => 1);
	is(redis_cli($redis, 'GET', 'fault:marker'), '', "$name: Redis came back empty");
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain, $pre);
}

#
# 3. Redis frozen (SIGSTOP) for ~3 s, past redis_timeout = 500 ms
#
{
	my $name = 'redis_sigstop';
	my $pre = fill_cache();
	my $load = start_load(8);
	at($load, 2);
	kill 'STOP', $redis->{pid};
	at($load, 5);
	kill 'CONT', $redis->{pid};
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain, $pre);
}

#
# 4. the worker SIGKILLed twice; each time the cluster restarts
#
{
	my $name = 'worker_kill9_x2';
	my $pre = fill_cache();
	my $load = start_load(12);
	for my $t (2, 6)
	{
		at($load, $t);
		my $pid = worker_pid($node);
		ok($pid, "$name: worker pid $pid before kill at ${t}s");
		kill 'KILL', $pid;
		my $new;
		ok(wait_until(sub { $new = worker_pid($node); $new ne '' && $new ne $pid }, 30),
			"$name: a new worker runs after the kill at ${t}s");
	}
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain, $pre, may_fail => 1);
}

#
# 5. Redis down, writes, PostgreSQL immediate stop with that backlog, start,
#    Redis back
#
{
	my $name = 'pg_immediate_stop';
	my $pre = fill_cache();
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
	check_and_report($name, finish_load($load), $drain, $pre, may_fail => 1);
}

#
# 6. a streaming standby promoted after the primary stops with a backlog
#
# commands only an entity_cache worker sends (PING at connect, UNLINK,
# SCAN): the counts since the last CONFIG RESETSTAT, '' if none
sub worker_commands
{
	return join ' ', grep { /^cmdstat_(unlink|ping|scan|select|auth):/ }
	  split /\r?\n/, redis_cli($redis, 'INFO', 'commandstats');
}

# Redis connections other than the readers and the redis-cli asking
sub other_clients
{
	my @lines = grep { !/\bname=ec-reader\b/ && !/\bcmd=client\b/ } split /\n/,
	  redis_cli($redis, 'CLIENT', 'LIST', 'TYPE', 'normal');
	return scalar @lines;
}

{
	my $name = 'standby_promotion';
	my $standby = new_standby($node, $redis, 'standby');
	is(worker_count($standby), '0', "$name: no worker on the standby");

	my $pre = fill_cache();
	my $load = start_load(18);
	at($load, 2);
	stop_redis($redis);
	at($load, 5);
	my $depth = ec_status($node)->{queue_depth};
	cmp_ok($depth, '>', 0, "$name: primary: backlog of $depth keys (Redis down)");
	my $t_stop = time();
	$node->stop('fast');
	# a fast shutdown sends all WAL, its shutdown checkpoint included, to the
	# standby before the primary exits
	my ($controldata) = run_command([ 'pg_controldata', $node->data_dir ]);
	my ($ckpt) = $controldata =~ /^Latest checkpoint location:\s+(\S+)/m;
	ok(wait_until(sub {
		$standby->safe_psql('postgres', "SELECT pg_last_wal_replay_lsn() > '$ckpt'") eq 't'
	}, 60), "$name: the standby replayed the old primary's WAL past its shutdown checkpoint ($ckpt)");
	my $sdepth = ec_status($standby)->{queue_depth};
	cmp_ok($sdepth, '>=', $depth, "$name: standby: the backlog is replicated ($sdepth keys)");

	# Redis back while the standby, with that backlog, is in recovery
	restart_redis($redis);
	redis_cli($redis, 'CONFIG', 'RESETSTAT');
	ok(never_within(sub { worker_count($standby) ne '0' || worker_commands() ne '' }, 3),
		"$name: standby in recovery: no worker, no worker command reaches Redis in 3 s");
	is(worker_commands(), '', "$name: Redis saw no PING, UNLINK or SCAN");
	is(other_clients(), 0, "$name: Redis has no client but the readers");
	my $st = ec_status($standby);
	is($st->{worker_pid}, '', "$name: standby: status shows no worker");
	is($st->{queue_depth}, $sdepth, "$name: standby: the backlog is untouched");
	ok(!$standby->log_contains(qr/entity_cache worker started/),
		"$name: standby: the worker never started in recovery");

	# drain_s: from the promote request until sync() returns true
	my $t_promote = time();
	$standby->promote;
	is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', "$name: promoted");
	$node = $standby;
	set_target($node);
	note sprintf '%s: %.1f s from the primary stop to the promoted server taking writes',
	  $name, time() - $t_stop;
	my $drain = drain_after_fault($name, $t_promote);
	ok(wait_until(sub { ec_status($node)->{redis_connected} eq 't' }, 30),
		"$name: promoted: the worker is connected");
	check_and_report($name, finish_load($load), $drain, $pre, may_fail => 1);
}

#
# 7. Redis password set under the worker, then the setting reloaded
#
my $last_pre;
{
	my $name = 'redis_password';
	my $pre = $last_pre = fill_cache();
	my $load = start_load(12);
	at($load, 2);
	my $e0 = ec_status($node)->{errors_total};
	write_file($password_file, 'n3wpass');
	redis_cli($redis, 'CONFIG', 'SET', 'requirepass', 'n3wpass');
	$redis->{password} = 'n3wpass';
	# Redis keeps connections that are already authenticated; drop them, as
	# a Redis restart or a network blip would
	redis_cli($redis, 'CLIENT', 'KILL', 'TYPE', 'normal');
	my $st;
	ok(wait_until(sub {
		$st = ec_status($node);
		$st->{errors_total} > $e0 && $st->{last_error} =~ /NOAUTH|Authentication required/
	}, 15), "$name: the worker fails to authenticate ($st->{last_error})");
	ok(wait_until(sub { ec_status($node)->{queue_depth} > 0 }, 15), "$name: rows kept");
	at($load, 6);
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET entity_cache.redis_password = 'n3wpass'; SELECT pg_reload_conf();");
	my $drain = drain_after_fault($name);
	check_and_report($name, finish_load($load), $drain, $pre);

	# back to no password
	redis_cli($redis, 'CONFIG', 'SET', 'requirepass', '');
	delete $redis->{password};
	write_file($password_file, '');
	$node->safe_psql('postgres',
		'ALTER SYSTEM RESET entity_cache.redis_password; SELECT pg_reload_conf();');
	$node->safe_psql('postgres', q{UPDATE app.entity SET label = label WHERE code = 'c1'});
	ok(wait_for_sync($node), "$name: no password again: sync");
}

# the checker itself: a planted stale value is counted once as stale; the
# pre-fault value of a code written since is counted as stale and lost
{
	my $rows = rows_json();
	my ($written) = grep { $_ ne 'c1' && $rows->{$_} ne $last_pre->{$_} } sort keys %$last_pre;
	redis_cli($redis, 'SET', 'entity:metadata:c1', '{"stale":true}');
	redis_cli($redis, 'SET', "entity:metadata:$written", $last_pre->{$written});
	my ($stale, $lost) = count_stale('self_check', $last_pre);
	is($stale, 2, 'self-check: the two planted values are stale');
	is($lost, 1, "self-check: the pre-fault value of $written, written since, is a lost invalidation");
}

my $total = sprintf 'fault harness total run time %.1f s', time() - $t_start;
print $rfh "$total\n";
close $rfh;
note $total;
$node->stop;
done_testing();
