# Redis with a password: a wrong password is an error in entity_cache.status
# (writes still succeed), fixing it with a reload (no restart) drains the
# queue; an ACL user in the URL works; a password changed under the worker
# is recovered by a reload; nobody but superusers reads the password.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use EntityCacheTest;

my $wrong = 'Wr0ngPa55';
my $redis = start_redis(extra => [ '--requirepass', 's3cret' ], password => 's3cret');
my $node = new_node('auth', $redis, conf => "entity_cache.redis_password = '$wrong'\n");
my $port = $redis->{port};

$node->safe_psql('postgres', q{
	CREATE ROLE app_user LOGIN;
	GRANT USAGE ON SCHEMA app TO app_user;
	GRANT SELECT, INSERT, UPDATE ON app.entity TO app_user;
	INSERT INTO app.entity (code) SELECT 'a' || g FROM generate_series(1, 100) g;
});

sub as_app_user
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql, extra_params => [ '-U', 'app_user' ]);
	return ($ret, $out, $err);
}

# update a$from..a$to as an ordinary user, in separate transactions
sub app_writes
{
	my ($from, $to) = @_;
	my ($ret, $out, $err) = as_app_user(join('',
		map { "UPDATE app.entity SET label = 'w$_' WHERE code = 'a$_';\n" } $from .. $to));
	return $ret == 0 && $err eq '';
}

my $glob = 'entity:metadata:a*';

#
# 1. a wrong password
#
my $st;
ok(wait_until(sub {
	$st = ec_status($node);
	$st->{last_error} =~ /AUTH/ && $st->{errors_total} > 0
}, 10), 'wrong password: an error is recorded');
like($st->{last_error}, qr/WRONGPASS|invalid password/,
	"wrong password: last_error says AUTH failed ($st->{last_error})");
unlike($st->{last_error}, qr/\Q$wrong\E/, 'wrong password: last_error does not show the password');
is($st->{redis_connected}, 'f', 'wrong password: not connected');
my $pid = $st->{worker_pid};
ok($pid, 'wrong password: the worker runs');
my $e1 = $st->{errors_total};
ok(wait_until(sub { ec_status($node)->{errors_total} > $e1 }, 8),
	'wrong password: the worker keeps trying, errors_total grows');

redis_fill($redis, 'entity:metadata:a', 1, 100, 'stale');
my $depth = ec_status($node)->{queue_depth};
is($depth, '100', 'wrong password: the 100 inserts are queued');
ok(app_writes(1, 100), 'wrong password: 100 writes succeed');
is(ec_status($node)->{queue_depth}, $depth + 100, 'wrong password: the writes are queued');
is(redis_count($redis, $glob), '100', 'wrong password: nothing reached Redis');
is($node->safe_psql('postgres', "SELECT entity_cache.sync('300 ms')"), 'f',
	'wrong password: sync times out');
ok(!$node->log_contains(qr/\Q$wrong\E/), 'wrong password: the password is not in the server log');

#
# 2. only superusers read the password (and the URL, which may hold one)
#
my ($ret, $out, $err) = as_app_user('SHOW entity_cache.redis_password');
isnt($ret, 0, 'SHOW entity_cache.redis_password fails for an ordinary user');
like($err, qr/must be superuser|permission denied/, "... with a privilege error");
unlike($out, qr/\Q$wrong\E/, '... and shows nothing');
($ret, $out, $err) = as_app_user(q{SELECT current_setting('entity_cache.redis_password')});
isnt($ret, 0, 'current_setting(entity_cache.redis_password) fails for an ordinary user');
($ret, $out, $err) = as_app_user('SHOW entity_cache.redis_url');
isnt($ret, 0, 'SHOW entity_cache.redis_url fails for an ordinary user');
($ret, $out, $err) = as_app_user(
	q{SELECT name || '=' || coalesce(setting, '') FROM pg_settings WHERE name LIKE 'entity_cache.%'});
is($ret, 0, 'pg_settings is readable');
unlike($out, qr/\Q$wrong\E|redis_password/, 'pg_settings does not show the password to an ordinary user');
($ret, $out, $err) = as_app_user('SHOW ALL');
unlike($out, qr/\Q$wrong\E/, 'SHOW ALL does not show the password to an ordinary user');
($ret, $out, $err) = as_app_user('SELECT last_error FROM entity_cache.status');
isnt($ret, 0, 'an ordinary user cannot read entity_cache.status');
is($node->safe_psql('postgres', 'SHOW entity_cache.redis_password'), $wrong,
	'a superuser can SHOW the password');

#
# 3. fix the password with ALTER SYSTEM + reload, no restart
#
my $t0 = time();
reload_with($node, q{ALTER SYSTEM SET entity_cache.redis_password = 's3cret'});
ok(wait_until(sub { ec_status($node)->{redis_connected} eq 't' }, 10),
	'password fixed: connected after a reload');
my $took = time() - $t0;
cmp_ok($took, '<', 3, sprintf('password fixed: reconnected %.1f s after the reload', $took));
ok(wait_for_sync($node, 15), 'password fixed: sync');
is(redis_count($redis, $glob), '0', 'password fixed: the queued keys are gone');
$st = ec_status($node);
is($st->{queue_depth}, '0', 'password fixed: queue empty');
is($st->{worker_pid}, $pid, 'password fixed: same worker process, no restart');

#
# 4. an ACL user and its password in the URL
#
redis_cli($redis, 'ACL', 'SETUSER', 'ecworker', 'on', '>ecpass', '~*', '&*', '+@all');
reload_with($node, qq{ALTER SYSTEM SET entity_cache.redis_url = 'redis://ecworker:ecpass\@127.0.0.1:$port/0';
	ALTER SYSTEM SET entity_cache.redis_password = ''});
ok(wait_until(sub { redis_cli($redis, 'CLIENT', 'LIST') =~ /\buser=ecworker\b/ }, 10),
	'ACL user: the worker is connected as the URL user');
is(ec_status($node)->{redis_connected}, 't', 'ACL user: status connected');
redis_fill($redis, 'entity:metadata:a', 1, 100, 'stale');
ok(app_writes(1, 30), 'ACL user: writes succeed');
ok(wait_for_sync($node, 15), 'ACL user: sync');
is(redis_count($redis, $glob), '70', 'ACL user: the 30 written keys are gone, the others kept');
($ret, $out, $err) = as_app_user('SHOW entity_cache.redis_url');
isnt($ret, 0, 'ACL user: an ordinary user cannot SHOW the URL');
unlike($out, qr/ecpass/, 'ACL user: nor see the password in it');

# the password of the ACL user changes under the worker
redis_cli($redis, 'ACL', 'SETUSER', 'ecworker', 'resetpass', '>ecpass2');
redis_cli($redis, 'CLIENT', 'KILL', 'USER', 'ecworker');
ok(wait_until(sub { ec_status($node)->{last_error} =~ /WRONGPASS|invalid password/ }, 10),
	'ACL user: a changed password is an AUTH error');
ok(app_writes(31, 40), 'ACL user, wrong password: writes succeed');
reload_with($node, qq{ALTER SYSTEM SET entity_cache.redis_url = 'redis://ecworker:ecpass2\@127.0.0.1:$port/0'});
ok(wait_for_sync($node, 15), 'ACL user, new password in the URL: sync');
is(redis_count($redis, $glob), '60', 'ACL user, new password: the queued keys are gone');

#
# 5. requirepass changed under a connected worker (CONFIG SET), then a
#    reload with the new password
#
reload_with($node, q{ALTER SYSTEM RESET entity_cache.redis_url;
	ALTER SYSTEM SET entity_cache.redis_password = 's3cret'});
ok(wait_until(sub {
	ec_status($node)->{redis_connected} eq 't'
	  && redis_cli($redis, 'CLIENT', 'LIST') !~ /\buser=ecworker\b/
}, 10), 'back to the default user and s3cret: connected');
ok(wait_for_sync($node, 15), 'default user: sync');

redis_cli($redis, 'CONFIG', 'SET', 'requirepass', 'n3wpass');
$redis->{password} = 'n3wpass';
# Redis keeps connections that are already authenticated; drop them, as a
# Redis restart or a network blip would
redis_cli($redis, 'CLIENT', 'KILL', 'TYPE', 'normal');
my $e_before = ec_status($node)->{errors_total};
ok(app_writes(41, 60), 'requirepass changed: writes succeed');
ok(wait_until(sub {
	$st = ec_status($node);
	$st->{errors_total} > $e_before && $st->{last_error} =~ /WRONGPASS|invalid password/
}, 10), "requirepass changed: AUTH errors ($st->{last_error})");
is($st->{redis_connected}, 'f', 'requirepass changed: not connected');
is(redis_count($redis, $glob), '60', 'requirepass changed: nothing applied');
is($st->{queue_depth}, '20', 'requirepass changed: the writes are queued');

reload_with($node, q{ALTER SYSTEM SET entity_cache.redis_password = 'n3wpass'});
ok(wait_for_sync($node, 15), 'new password after a reload: sync');
is(redis_count($redis, $glob), '40', 'new password: the queued keys are gone');
$st = ec_status($node);
is($st->{redis_connected}, 't', 'new password: connected');
is($st->{queue_depth}, '0', 'new password: queue empty');
is($st->{worker_pid}, $pid, 'new password: same worker process throughout');

#
# 6. a monitoring role may read entity_cache.status, but not the password
#
$node->safe_psql('postgres', 'CREATE ROLE monitor LOGIN IN ROLE pg_monitor');
($ret, $out, $err) = $node->psql('postgres', 'SELECT redis_connected FROM entity_cache.status',
	extra_params => [ '-U', 'monitor' ]);
is($out, 't', 'pg_monitor member reads entity_cache.status');
($ret, $out, $err) = $node->psql('postgres', 'SHOW entity_cache.redis_password',
	extra_params => [ '-U', 'monitor' ]);
unlike($out, qr/n3wpass/, 'pg_monitor member does not see the Redis password');

$node->stop;
done_testing();
