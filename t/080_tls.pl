# TLS to Redis: invalidation over rediss:// with the server certificate
# verified against a CA file (by IP address and by host name), and with
# mutual TLS.  Each common misconfiguration shows its own error in
# entity_cache.status while writes go on and queue, and a reload with the
# right setting (or a fixed server) drains the queue: a TLS server behind
# redis://, an unknown CA, a certificate for another host, an expired
# certificate, a plaintext server behind rediss://, a client certificate
# missing or refused, a CA file that cannot be read.  verify = none warns.
# Certificates are made by the test with the openssl CLI.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $c = make_test_certs(PostgreSQL::Test::Utils::tempdir('certs'));
my $redis = start_redis(tls => { cert => $c->{server}, key => $c->{server_key}, ca => $c->{ca} });
my $port = $redis->{port};

# the first case: a TLS server behind redis://
my $node = new_node('tls', $redis, conf => "entity_cache.redis_url = 'redis://127.0.0.1:$port/0'\n");
my $pid = worker_pid($node);

# Insert $n rows whose keys are first cached (stale) in $r: their
# invalidations are what must reach $r.  Returns the key prefix.
my $round = 0;
sub write_round
{
	my ($r, $n) = @_;
	my $prefix = 'r' . ++$round . '_';
	redis_fill($r, "entity:metadata:$prefix", 1, $n, 'stale');
	$node->safe_psql('postgres',
		"INSERT INTO app.entity (code) SELECT '$prefix' || g FROM generate_series(1, $n) g");
	return $prefix;
}

# The worker fails with an error matching $re; writes made meanwhile queue
# and do not reach $r.  Returns the prefix of those writes.
sub expect_failure
{
	my ($name, $r, $re, $errors_before) = @_;
	my $st;
	# a write makes an idle worker notice a server restarted under it
	my $prefix = write_round($r, 50);
	ok(wait_until(sub {
		$st = ec_status($node);
		$st->{errors_total} > $errors_before && $st->{last_error} =~ $re
	}, 30), "$name: status.last_error says so ($st->{last_error})");
	is($st->{redis_connected}, 'f', "$name: not connected");
	is($st->{redis_node}, '', "$name: no redis_node while not connected");
	ok(ec_status($node)->{queue_depth} >= 50, "$name: the writes queue");
	is(redis_exist_count($r, "entity:metadata:$prefix", 50), '50', "$name: nothing reached Redis");
	return $prefix;
}

# After the fix: the queued writes and new ones reach $r; status shows
# the node and TLS.
sub expect_recovery
{
	my ($name, $r, $prefix, $tls, $nodename) = @_;
	ok(wait_for_sync($node, 60), "$name, fixed: sync() succeeds");
	is(redis_exist_count($r, "entity:metadata:$prefix", 50), '0',
		"$name, fixed: the queued invalidations reached Redis");
	my $p2 = write_round($r, 50);
	ok(wait_for_sync($node, 30), "$name, fixed: new writes are applied");
	is(redis_exist_count($r, "entity:metadata:$p2", 50), '0', "$name, fixed: new invalidations reached Redis");
	my $st = ec_status($node);
	is($st->{redis_connected}, 't', "$name, fixed: connected");
	is($st->{redis_tls}, $tls ? 't' : 'f', "$name, fixed: status.redis_tls");
	is($st->{redis_node}, $nodename // "127.0.0.1:$r->{port}", "$name, fixed: status.redis_node");
}

sub errors { ec_status($node)->{errors_total} }

# 1. a TLS server behind redis://
my $p = expect_failure('TLS server behind redis://', $redis,
	qr/(answered with TLS|TLS-only Redis behind redis:\/\/).*rediss:\/\//, -1);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_url = 'rediss://127.0.0.1:$port/0'");
expect_recovery('rediss:// by IP address, CA file', $redis, $p, 1);

# 2. a host name: SNI, the name checked against the certificate; localhost
# may resolve to ::1 first, where nothing listens: the next address is tried
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_url = 'rediss://localhost:$port/0'");
ok(wait_until(sub { ec_status($node)->{redis_node} eq "localhost:$port" }, 30),
	'rediss:// by host name: connected to localhost');
$p = write_round($redis, 50);
expect_recovery('rediss:// by host name', $redis, $p, 1, "localhost:$port");
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_url = 'rediss://127.0.0.1:$port/0'");

# 3. a CA that did not sign the server's certificate
my $e = errors();
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_ca_file = '$c->{ca2}'");
$p = expect_failure('unknown CA', $redis, qr/signed by an unknown CA.*redis_tls_ca_file/, $e);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_ca_file = '$c->{ca}'");
expect_recovery('unknown CA', $redis, $p, 1);

# 4. a CA file that cannot be read
$e = errors();
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_ca_file = '/nonexistent/ca.crt'");
$p = expect_failure('unreadable CA file', $redis,
	qr/could not load the CA file "\/nonexistent\/ca\.crt"/, $e);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_ca_file = '$c->{ca}'");
expect_recovery('unreadable CA file', $redis, $p, 1);

# 5. a certificate for another host: verify = ca accepts it
$e = errors();
$redis->{tls}{cert} = $c->{wronghost};
$redis->{tls}{key} = $c->{wronghost_key};
restart_redis($redis);
$p = expect_failure('host mismatch', $redis,
	qr/does not name "127\.0\.0\.1".*redis_tls_verify = ca/, $e);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_verify = 'ca'");
expect_recovery('host mismatch, verify = ca', $redis, $p, 1);

# 6. an expired certificate (verify = ca checks dates too); verify = none
# accepts it, with a WARNING at each connect
$e = errors();
$redis->{tls}{cert} = $c->{expired};
$redis->{tls}{key} = $c->{expired_key};
restart_redis($redis);
$p = expect_failure('expired certificate', $redis, qr/certificate of Redis at 127\.0\.0\.1:\d+ has expired/, $e);
my $logpos = -s $node->logfile;
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_verify = 'none'");
expect_recovery('expired certificate, verify = none', $redis, $p, 1);
ok(wait_until(sub {
	slurp_file($node->logfile, $logpos) =~ /WARNING:.*TLS certificate is not verified/ }, 10),
	'verify = none: a WARNING in the log');

$redis->{tls}{cert} = $c->{server};
$redis->{tls}{key} = $c->{server_key};
restart_redis($redis);
reload_with($node, "ALTER SYSTEM RESET entity_cache.redis_tls_verify");
$p = write_round($redis, 50);
expect_recovery('valid certificate again, verify = full', $redis, $p, 1);

# 7. a plaintext Redis behind rediss://
my $plain = start_redis();
$e = errors();
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_url = 'rediss://127.0.0.1:$plain->{port}/0'");
$p = expect_failure('plaintext server behind rediss://', $plain,
	qr/(does not speak TLS|timed out).*plaintext Redis behind rediss:\/\//, $e);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_url = 'redis://127.0.0.1:$plain->{port}/0'");
expect_recovery('plaintext server behind redis://', $plain, $p, 0);

# 8. mutual TLS: no client certificate, one from an unknown CA, the right one
my $mtls = start_redis(tls => { cert => $c->{server}, key => $c->{server_key}, ca => $c->{ca},
	auth_clients => 'yes', client_cert => $c->{client}, client_key => $c->{client_key} });
$e = errors();
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_url = 'rediss://127.0.0.1:$mtls->{port}/0'");
$p = expect_failure('mutual TLS, no client certificate', $mtls,
	qr/refused our client certificate.*redis_tls_cert_file/, $e);
$e = errors();
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_cert_file = '$c->{badclient}';
	ALTER SYSTEM SET entity_cache.redis_tls_key_file = '$c->{badclient_key}'");
my $p2 = expect_failure('mutual TLS, client certificate from an unknown CA', $mtls,
	qr/refused our client certificate/, $e);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_cert_file = '$c->{client}';
	ALTER SYSTEM SET entity_cache.redis_tls_key_file = '$c->{client_key}'");
expect_recovery('mutual TLS', $mtls, $p, 1);
is(redis_exist_count($mtls, "entity:metadata:$p2", 50), '0', 'mutual TLS: the second failure\'s writes applied too');

# 9. a client key that does not match the certificate: refused before connecting
$e = errors();
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_key_file = '$c->{badclient_key}'");
$p = expect_failure('mismatched client key', $mtls, qr/does not match the certificate/, $e);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_tls_key_file = '$c->{client_key}'");
expect_recovery('matching client key', $mtls, $p, 1);

# 10. rediss-sentinel://: TLS to a sentinel and to the master it names; the
# sentinel and the master have different passwords
my $tm = start_redis(tls => { cert => $c->{server}, key => $c->{server_key}, ca => $c->{ca} },
	extra => [ '--requirepass', 'masterpw' ], password => 'masterpw');
my $ts = { port => PostgreSQL::Test::Cluster::get_free_port(),
	dir => PostgreSQL::Test::Utils::tempdir('tls_sentinel'), password => 'sentinelpw',
	tls => { cert => $c->{server}, key => $c->{server_key}, ca => $c->{ca} } };
open my $fh, '>', "$ts->{dir}/sentinel.conf" or die;
print $fh <<"EOC";
port 0
tls-port $ts->{port}
bind 127.0.0.1
daemonize yes
pidfile $ts->{dir}/sentinel.pid
logfile $ts->{dir}/sentinel.log
dir $ts->{dir}
tls-cert-file $c->{server}
tls-key-file $c->{server_key}
tls-ca-cert-file $c->{ca}
tls-auth-clients no
tls-replication yes
requirepass sentinelpw
sentinel monitor tlsmaster 127.0.0.1 $tm->{port} 1
sentinel auth-pass tlsmaster masterpw
EOC
close $fh;
system('redis-server', "$ts->{dir}/sentinel.conf", '--sentinel') == 0 or die 'could not start a TLS sentinel';
ok(wait_until(sub { redis_cli($ts, 'SENTINEL', 'get-master-addr-by-name', 'tlsmaster') =~ /$tm->{port}/ }, 20),
	'TLS sentinel: monitors the TLS master');
$e = errors();
reload_with($node, "ALTER SYSTEM RESET entity_cache.redis_tls_cert_file; ALTER SYSTEM RESET entity_cache.redis_tls_key_file;
	ALTER SYSTEM SET entity_cache.redis_url = 'rediss-sentinel://:masterpw\@127.0.0.1:$ts->{port}/0?master=tlsmaster'");
# the URL's password is the master's, not the sentinel's
$p = expect_failure('rediss-sentinel://, sentinel password missing', $tm,
	qr/Redis Sentinel AUTH failed: WRONGPASS/, $e);
reload_with($node, "ALTER SYSTEM SET entity_cache.redis_sentinel_password = 'sentinelpw'");
expect_recovery('rediss-sentinel:// with redis_sentinel_password', $tm, $p, 1);
# (the server itself logs the statements and "parameter ... changed to")
ok(!grep({ /sentinelpw|masterpw/ && /entity_cache(:| worker)/ } split /\n/, slurp_file($node->logfile)),
	'no password in the worker\'s messages');
if (open my $pf, '<', "$ts->{dir}/sentinel.pid")
{
	chomp(my $spid = <$pf> // '');
	kill 'TERM', $spid if $spid;
}

is(worker_pid($node), $pid, 'the worker never restarted: every failure was an error, not a crash');
ok(!$node->log_contains(qr/terminated by signal|server process .* was terminated/),
	'no process crashed');

$node->stop;
done_testing();
