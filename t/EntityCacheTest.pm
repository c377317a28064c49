# Helpers for the TAP suites: a throwaway Redis on a free loopback port and
# a PostgreSQL cluster with entity_cache preloaded and app.entity created.
package EntityCacheTest;

use strict;
use warnings;

use Exporter 'import';
use FindBin;
use File::Path ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep time);
use Test::More;

our @EXPORT = qw(start_redis restart_redis redis_cli stop_redis new_node
  create_entity_schema wait_for_sync wait_until redis_fill redis_count
  ec_status worker_pid redis_exist_count worker_count new_standby
  wait_for_worker never_within make_test_certs redis_url
  start_redis_cluster cluster_cli cluster_primaries cluster_wait_ok
  cluster_dump row_jsons lost_and_stale start_update_load finish_update_load
  reload_with update_rounds worker_top_memory);

# What the last status, query or redis-cli call of a wait saw: wait_until
# prints it when it gives up, as poll_query_until prints the last output.
our $last_seen;
sub _saw { $last_seen = $_[0]; return $_[1] }

my @redis_servers;

# start_redis(extra => ['--requirepass', 'x'], password => 'x', port => N,
#             dir => D, persist => 1)
# persist keeps an append-only file in dir (fsync always), so a restart with
# the same dir (restart_redis) brings the data back.
sub start_redis
{
	my (%opts) = @_;
	my $r = {
		port => $opts{port} // PostgreSQL::Test::Cluster::get_free_port(),
		dir => $opts{dir} // PostgreSQL::Test::Utils::tempdir('redis'),
		extra => [ @{ $opts{extra} // [] } ],
		persist => $opts{persist},
		tls => $opts{tls},
		password => $opts{password} };
	$r->{tls_port} = PostgreSQL::Test::Cluster::get_free_port()
	  if $r->{tls} && $r->{tls}{plain_port};
	_launch_redis($r);
	push @redis_servers, $r;
	return $r;
}

# restart_redis($r): stop it if it runs, start it again on the same port,
# with the same directory and options; with persist, the data comes back.
# restart_redis($r, empty => 1): its data files (AOF, RDB) removed first, so
# it comes back empty, as a Redis without persistence would.
sub restart_redis
{
	my ($r, %opts) = @_;
	stop_redis($r);
	if ($opts{empty})
	{
		opendir my $dh, $r->{dir} or die "$r->{dir}: $!";
		for my $f (grep { !/^\.\.?$/ && !/^redis\.(log|pid)$/ } readdir $dh)
		{
			File::Path::rmtree("$r->{dir}/$f");
		}
		closedir $dh;
	}
	_launch_redis($r);
	return $r;
}

sub _launch_redis
{
	my ($r) = @_;
	my ($port, $dir) = ($r->{port}, $r->{dir});
	my @persist = $r->{persist} ? ('--save', '', '--appendonly', 'yes',
		'--appendfsync', 'always') : ('--save', '', '--appendonly', 'no');
	unlink "$dir/redis.pid";
	my @cmd = (
		'redis-server', _listen_args($r), '--bind', '127.0.0.1',
		'--dir', $dir, '--daemonize', 'yes',
		'--pidfile', "$dir/redis.pid", '--logfile', "$dir/redis.log",
		@persist, @{ $r->{extra} });
	system(@cmd) == 0 or die "could not start redis-server: @cmd";
	for (1 .. 100)
	{
		last if -s "$dir/redis.pid" && redis_cli($r, 'PING') eq 'PONG';
		usleep(50_000);
	}
	die "redis-server on port $port did not answer" unless redis_cli($r, 'PING') eq 'PONG';
	open my $fh, '<', "$dir/redis.pid" or die;
	chomp($r->{pid} = <$fh>);
	close $fh;
}

# the port options: plain, or with tls => {cert, key, ca, auth_clients,
# client_cert, client_key} TLS only (--port 0), as managed services run;
# with tls => {..., plain_port => 1} both: port plain, tls_port TLS (the
# fault harness over TLS: the worker on TLS, its readers and checks plain)
sub _listen_args
{
	my ($r) = @_;
	my $t = $r->{tls};
	return ('--port', $r->{port}) unless $t;
	return ('--port', $t->{plain_port} ? $r->{port} : '0',
		'--tls-port', $r->{tls_port} // $r->{port},
		'--tls-cert-file', $t->{cert}, '--tls-key-file', $t->{key},
		'--tls-ca-cert-file', $t->{ca},
		'--tls-auth-clients', $t->{auth_clients} // 'no');
}

# redis-cli's options to reach $r: over TLS without checking the server
# (the tests check the worker's verification, not the CLI's), with the
# trusted client certificate for servers that require one
sub _cli_tls_args
{
	my ($r) = @_;
	my $t = $r->{tls};
	return () unless $t && !$t->{plain_port};
	return ('--tls', '--insecure',
		$t->{client_cert} ? ('--cert', $t->{client_cert}, '--key', $t->{client_key}) : ());
}

# redis_cli($r, @args): the reply as redis-cli prints it, chomped
sub redis_cli
{
	my ($r, @args) = @_;
	my @auth = defined $r->{password} ? ('--no-auth-warning', '-a', $r->{password}) : ();
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'redis-cli', '-h', '127.0.0.1', '-p', $r->{port}, _cli_tls_args($r), @auth, @args ],
		'>', \$out, '2>', \$err);
	chomp $out;
	return _saw("redis-cli @args[0 .. ($#args < 2 ? $#args : 2)]: $out$err", $out);
}

# redis_fill($r, $prefix, $from, $to, $value): SET prefix.i = value, i in from..to
sub redis_fill
{
	my ($r, $prefix, $from, $to, $value) = @_;
	return redis_cli($r, 'EVAL',
		"for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do "
		  . "redis.call('SET', ARGV[1] .. i, ARGV[4]) end return 1",
		'0', $prefix, $from, $to, $value // 'stale');
}

# redis_count($r, $glob): how many keys match (KEYS, fine for tests)
sub redis_count
{
	my ($r, $glob) = @_;
	return redis_cli($r, 'EVAL', "return #redis.call('KEYS', ARGV[1])", '0', $glob);
}

# how many of the keys "$prefix$i", i = 1 .. $n, exist (one round trip)
sub redis_exist_count
{
	my ($r, $prefix, $n) = @_;
	return redis_cli($r, 'EVAL',
		"local c = 0 for i = 1, tonumber(ARGV[2]) do c = c + redis.call('EXISTS', ARGV[1] .. i) end return c",
		'0', $prefix, $n);
}

sub stop_redis
{
	my ($r) = @_;
	return unless $r->{pid};
	kill 'CONT', $r->{pid};
	kill 'TERM', $r->{pid};
	for (1 .. 100)
	{
		last unless kill 0, $r->{pid};
		usleep(50_000);
	}
	kill 'KILL', $r->{pid} if kill 0, $r->{pid};
	delete $r->{pid};
}

END
{
	stop_redis($_) for @redis_servers;
}

# start_redis_cluster(primaries => 3, replicas => 1, password => P,
# extra => [...], tls => {...}): that many redis-server
# in cluster mode on loopback ports below 55535 (a node's bus listens on
# port + 10000), each with its own directory and nodes.conf, joined with
# redis-cli --cluster create and waited for until every node says
# cluster_state:ok.  Returns { nodes => [ redis handles ], seed => first }.
sub start_redis_cluster
{
	my (%opts) = @_;
	my $n = ($opts{primaries} // 3) * (1 + ($opts{replicas} // 1));
	my @ports;
	for my $try (1 .. 200)
	{
		my $base = 20000 + int(rand(25000));
		my @cand = map { $base + $_ } 0 .. $n - 1;
		next if grep { !PostgreSQL::Test::Cluster::can_bind('127.0.0.1', $_)
			  || !PostgreSQL::Test::Cluster::can_bind('127.0.0.1', $_ + 10000) } @cand;
		@ports = @cand;
		last;
	}
	die 'no free ports for a Redis Cluster' unless @ports;
	# over TLS (tls => as for start_redis): TLS only, the bus and the
	# replication too
	my @tls = $opts{tls} ? ('--tls-cluster', 'yes', '--tls-replication', 'yes') : ();
	my @nodes = map {
		start_redis(port => $_, tls => $opts{tls}, extra => [
			'--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
			'--cluster-node-timeout', $opts{node_timeout} // 2000, @tls,
			@{ $opts{extra} // [] } ],
			password => $opts{password})
	} @ports;
	my @auth = defined $opts{password} ? ('--no-auth-warning', '-a', $opts{password}) : ();
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'redis-cli', _cli_tls_args($nodes[0]), @auth, '--cluster', 'create',
			(map { "127.0.0.1:$_" } @ports),
			'--cluster-replicas', $opts{replicas} // 1, '--cluster-yes' ],
		'>', \$out, '2>', \$err)
	  or die "redis-cli --cluster create failed: $out $err";
	my $c = { nodes => \@nodes, seed => $nodes[0], password => $opts{password} };
	cluster_wait_ok($c) or die 'the Redis Cluster did not reach cluster_state:ok';
	return $c;
}

# redis-cli -c (follows redirections) against the seed, or node $r
sub cluster_cli
{
	my ($c, @args) = @_;
	return redis_cli($c->{seed}, '-c', @args);
}

# every live node says cluster_state:ok and all agree on the primaries and
# on the slots each owns (a failover that starts before the replica knows
# its primary's newest slots can leave one unowned)
sub cluster_wait_ok
{
	my ($c, $timeout) = @_;
	return wait_until(sub {
		my @live = grep { $_->{pid} } @{ $c->{nodes} };
		for my $r (@live)
		{
			return 0 unless redis_cli($r, 'CLUSTER', 'INFO') =~ /cluster_state:ok/;
		}
		my %views = map { cluster_slot_view($_) => 1 } @live;
		return keys %views == 1;
	}, $timeout // 60);
}

# [ port, slot ranges ] of every primary that owns slots and is not failing,
# as node $r sees it (a slot being migrated, shown only on its two nodes
# as "[slot->-id]", is left out)
sub _cluster_masters
{
	my ($r) = @_;
	my @m;
	for my $line (split /\n/, redis_cli($r, 'CLUSTER', 'NODES'))
	{
		my @f = split ' ', $line;
		next unless @f >= 9 && $f[2] =~ /master/ && $f[2] !~ /fail/;
		my ($port) = $f[1] =~ /:(\d+)@/;
		push @m, [ $port, join(',', grep { /^\d+(-\d+)?$/ } @f[ 8 .. $#f ]) ];
	}
	return @m;
}

# which primary owns which slots, as node $r sees it: "port slots; ..."
sub cluster_slot_view
{
	my ($r) = @_;
	return join('; ', sort map { "$_->[0] $_->[1]" } _cluster_masters($r));
}

# ports of the primaries that own slots, as node $r (default: any live) sees them
sub cluster_primaries
{
	my ($c, $r) = @_;
	$r //= (grep { $_->{pid} } @{ $c->{nodes} })[0];
	return sort { $a <=> $b } map { $_->[0] } _cluster_masters($r);
}

# { key => value } of every key matching $glob on every primary
sub cluster_dump
{
	my ($c, $glob) = @_;
	my %h;
	for my $port (cluster_primaries($c))
	{
		my ($r) = grep { $_->{port} == $port } @{ $c->{nodes} };
		my @kv = split /\n/, redis_cli($r, 'EVAL',
			"local o = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
			  . "o[#o + 1] = k o[#o + 1] = redis.call('GET', k) end return o",
			'0', $glob);
		while (@kv >= 2)
		{
			my ($k, $v) = splice @kv, 0, 2;
			$h{$k} = $v;
		}
	}
	return \%h;
}

# { code => row_to_json(e)::text } of app.entity
sub row_jsons
{
	my ($node) = @_;
	my %h = map { split /\x1f/, $_, 2 } split /\n/, $node->safe_psql('postgres',
		'SELECT code, row_to_json(e)::text FROM app.entity e',
		extra_params => [ '-F', "\x1f" ]);
	return \%h;
}

# lost_and_stale($before, $rows, $cache, $prefix): with the cache filled
# with $before (code => value) before a load, $rows the table after it and
# $cache the keys after sync():
#   lost   codes written during the load whose key still holds the value
#          from before (a committed write whose invalidation never came)
#   stale  keys whose value is not the row's current JSON
sub lost_and_stale
{
	my ($before, $rows, $cache, $prefix) = @_;
	my ($lost, $stale) = (0, 0);
	for my $code (keys %$rows)
	{
		my $v = $cache->{"$prefix$code"};
		next unless defined $v;
		$stale++ if $v ne $rows->{$code};
		$lost++ if defined $before->{$code} && $rows->{$code} ne $before->{$code}
		  && $v eq $before->{$code};
	}
	return ($lost, $stale);
}

# A write load in the background: pgbench, $rate single-row UPDATEs per
# second of app.entity codes c1 .. c$ncodes for $seconds.  finish_update_load
# waits for it and returns the number of transactions processed.
sub start_update_load
{
	my ($node, $ncodes, $rate, $seconds) = @_;
	my $script = "$PostgreSQL::Test::Utils::tmp_check/update_load.sql";
	open my $fh, '>', $script or die "$script: $!";
	print $fh "\\set id random(1, $ncodes)\n"
	  . "UPDATE app.entity SET label = 'w' || :id || '-' || md5(random()::text), "
	  . "modified_ts = clock_timestamp() WHERE code = 'c' || :id;\n";
	close $fh;
	my $out = '';
	my $h = IPC::Run::start([ 'pgbench', '-n', '-h', $node->host, '-p', $node->port,
			'-c', '2', '-j', '1', '-R', $rate, '-T', $seconds, '-f', $script, 'postgres' ],
		'>', \$out, '2>&1');
	return { h => $h, out => \$out };
}

sub finish_update_load
{
	my ($load) = @_;
	$load->{h}->finish;
	return ${ $load->{out} } =~ /number of transactions actually processed: (\d+)/ ? $1 : 0;
}

# make_test_certs($dir): certificates for the TLS suites, made with the
# openssl CLI: a CA (ca.crt) and another CA nobody trusts (ca2.crt); server
# certificates for 127.0.0.1 and localhost (server), for another host only
# (wronghost), expired (expired), signed by the other CA (unknownca); client
# certificates signed by the CA (client) and by the other one (badclient).
# Returns { name => path } with each NAME.crt and NAME.key.
sub make_test_certs
{
	my ($dir) = @_;
	my %p;
	my $ossl = sub {
		my ($out, $err) = ('', '');
		IPC::Run::run([ 'openssl', @_ ], '>', \$out, '2>', \$err)
		  or die "openssl @_ failed: $err";
	};
	for my $ca (qw(ca ca2))
	{
		$ossl->('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
			'-keyout', "$dir/$ca.key", '-out', "$dir/$ca.crt", '-subj', "/CN=entity_cache test $ca");
		$p{$ca} = "$dir/$ca.crt";
	}
	my %certs = (
		server => [ 'ca', 'IP:127.0.0.1,DNS:localhost', 2 ],
		wronghost => [ 'ca', 'DNS:other.example', 2 ],
		expired => [ 'ca', 'IP:127.0.0.1,DNS:localhost', -1 ],
		unknownca => [ 'ca2', 'IP:127.0.0.1,DNS:localhost', 2 ],
		client => [ 'ca', 'DNS:entity-cache-client', 2 ],
		badclient => [ 'ca2', 'DNS:entity-cache-client', 2 ]);
	for my $name (sort keys %certs)
	{
		my ($ca, $san, $days) = @{ $certs{$name} };
		open my $fh, '>', "$dir/$name.ext" or die;
		print $fh "subjectAltName = $san\n";
		close $fh;
		$ossl->('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', "$dir/$name.key",
			'-out', "$dir/$name.csr", '-subj', "/CN=$name");
		$ossl->('x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/$ca.crt",
			'-CAkey', "$dir/$ca.key", '-CAcreateserial', '-days', $days,
			'-extfile', "$dir/$name.ext", '-out', "$dir/$name.crt");
		$p{$name} = "$dir/$name.crt";
		$p{"${name}_key"} = "$dir/$name.key";
	}
	chmod 0600, glob("$dir/*.key");
	return \%p;
}

# the seed table of the application, as the README describes it
sub create_entity_schema
{
	my ($node) = @_;
	$node->safe_psql('postgres', PostgreSQL::Test::Utils::slurp_file(
		"$FindBin::RealBin/../scripts/app_entity.sql"));
}

# the URL the worker reaches $redis with: rediss:// to a TLS server
sub redis_url
{
	my ($r) = @_;
	return "rediss://127.0.0.1:" . ($r->{tls_port} // $r->{port}) . "/0" if $r->{tls};
	return "redis://127.0.0.1:$r->{port}/0";
}

# new_node($name, $redis, conf => "extra lines", no_schema => 1,
#          redelete => 1)
# Without redelete, entity_cache.redelete_delay is 0: the suites plant
# values in Redis right after the worker applied a key (a stale cache, a
# fixture) and check what the worker does next, and a redelete would remove
# them 100 ms later, as it would a racing reader's, at a moment that depends
# on the machine's speed.  t/100_consistency.pl tests the redelete, with
# the default setting (redelete => 1).
sub new_node
{
	my ($name, $redis, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	my $url = redis_url($redis);
	my $ca = $redis->{tls} ? "entity_cache.redis_tls_ca_file = '$redis->{tls}{ca}'\n" : '';
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'entity_cache'
entity_cache.database = 'postgres'
entity_cache.redis_url = '$url'
entity_cache.redis_timeout = 1000
$ca} . ($opts{redelete} ? '' : "entity_cache.redelete_delay = 0\n") . ($opts{conf} // ''));
	$node->start;
	unless ($opts{no_schema})
	{
		create_entity_schema($node);
		$node->safe_psql('postgres', 'CREATE EXTENSION entity_cache');
	}
	return $node;
}

# poll until $code returns true, or $timeout seconds pass; on timeout, say
# what the last status, query or redis-cli call made by $code returned
sub wait_until
{
	my ($code, $timeout) = @_;
	$timeout //= 30;
	my $deadline = time() + $timeout;
	local $last_seen;
	while (time() < $deadline)
	{
		return 1 if $code->();
		usleep(50_000);
	}
	my (undef, $file, $line) = caller;
	Test::More::diag("wait_until at $file line $line gave up after ${timeout} s; last seen: "
		  . ($last_seen // 'nothing recorded'));
	return 0;
}

# true if $code stays false for $secs seconds (something must NOT happen);
# if it does happen, say what was seen
sub never_within
{
	my ($code, $secs) = @_;
	my $deadline = time() + $secs;
	local $last_seen;
	while (time() < $deadline)
	{
		if ($code->())
		{
			my (undef, $file, $line) = caller;
			Test::More::diag("never_within at $file line $line: it happened; last seen: "
				  . ($last_seen // 'nothing recorded'));
			return 0;
		}
		usleep(50_000);
	}
	return 1;
}

# wait until a worker runs and status says it is connected to Redis
sub wait_for_worker
{
	my ($node, $timeout) = @_;
	return wait_until(sub {
		my $st = ec_status($node);
		$st->{worker_pid} ne '' && $st->{redis_connected} eq 't';
	}, $timeout);
}

# entity_cache.status as a hash; booleans as 't'/'f', NULLs as ''
sub ec_status
{
	my ($node) = @_;
	my @cols = qw(worker_pid redis_connected queue_depth oldest_pending_age
	  applied_total errors_total last_error last_error_at database worker_note
	  redis_node redis_tls notify_skipped refresh_failed redelete_pending
	  cluster_nodes cluster_slots_loaded_at cluster_redirections);
	my $out = $node->safe_psql('postgres',
		'SELECT ' . join(', ', map { "coalesce(" . $_ . "::text, '')" } @cols)
		  . ' FROM entity_cache.status',
		extra_params => [ '-F', "\x1f" ]);
	my @vals = split /\x1f/, $out, -1;
	my %h;
	@h{@cols} = map { $_ eq 'true' ? 't' : $_ eq 'false' ? 'f' : $_ } @vals;
	return _saw('status: ' . join(', ', map { "$_=$h{$_}" } grep { $h{$_} ne '' } @cols), \%h);
}

sub _saw_query
{
	my ($node, $sql) = @_;
	my $out = $node->safe_psql('postgres', $sql);
	return _saw("$sql: $out", $out);
}

# PID of the worker as pg_stat_activity shows it; '' if none, or if the
# server does not answer (it may be restarting after a crash).  While the
# server restarts, psql can exit before it reads the query from its stdin:
# IPC::Run then dies writing to the pipe ("Broken pipe"), which here is
# one more way of not answering, not a test failure.
sub worker_pid
{
	my ($node) = @_;
	my ($ret, $out, $err) = (undef, '', '');
	eval {
		($ret, $out, $err) = $node->psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE backend_type = 'entity_cache worker'");
		1;
	} or $err = "psql: $@";
	return _saw("worker pid: $out$err", defined $ret && $ret == 0 ? $out : '');
}

# Rounds $from .. $to of one UPDATE of every app.entity row, each applied
# (sync) and, with redeletes => 1, redeleted (status.redelete_pending back
# to 0) before the next; false if one is not.
sub update_rounds
{
	my ($node, $from, $to, %opts) = @_;
	for my $i ($from .. $to)
	{
		$node->safe_psql('postgres', "UPDATE app.entity SET label = 'r$i'");
		wait_for_sync($node) or return 0;
		next unless $opts{redeletes};
		wait_until(sub { ec_status($node)->{redelete_pending} eq '0' }) or return 0;
	}
	return 1;
}

# Bytes the worker's TopMemoryContext uses for its own chunks, from the
# dump pg_log_backend_memory_contexts() writes to the server log: what a
# worker leaks between transactions, where that is the current context.
sub worker_top_memory
{
	my ($node) = @_;
	my $pid = ec_status($node)->{worker_pid};
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
	my $used;
	wait_until(sub {
		my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset);
		($used) = $log =~ /level: 0; TopMemoryContext: \d+ total in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/;
		defined $used;
	}) or die 'no memory context dump in the log';
	return $used;
}

# how many entity_cache workers the node runs (0 on a standby)
sub worker_count
{
	my ($node) = @_;
	return _saw_query($node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'entity_cache worker'");
}

# A streaming standby of $primary from a fresh backup, started and caught
# up; it inherits the primary's configuration, so it preloads entity_cache
# and points at the same Redis (checked).
sub new_standby
{
	my ($primary, $redis, $name) = @_;
	$primary->backup("${name}_backup");
	my $standby = PostgreSQL::Test::Cluster->new($name);
	$standby->init_from_backup($primary, "${name}_backup", has_streaming => 1);
	Test::More::like(PostgreSQL::Test::Utils::slurp_file($standby->data_dir . '/postgresql.conf'),
		qr/shared_preload_libraries = 'entity_cache'.*entity_cache\.redis_url = '\Q@{[ redis_url($redis) ]}\E'/s,
		"$name: preloads entity_cache, same Redis");
	$standby->start;
	$primary->wait_for_catchup($standby);
	return $standby;
}

# entity_cache.sync() until true: everything committed so far is in Redis
# reload_with($node, $sql): run $sql (ALTER SYSTEM statements, ';'-separated)
# in the postgres database, then reload the configuration
sub reload_with
{
	my ($node, $sql) = @_;
	$node->safe_psql('postgres', "$sql; SELECT pg_reload_conf();");
}

sub wait_for_sync
{
	my ($node, $timeout) = @_;
	$timeout //= 60;
	return wait_until(sub {
		$node->safe_psql('postgres', "SELECT entity_cache.sync('1 s')") eq 't';
	}, $timeout);
}

1;
