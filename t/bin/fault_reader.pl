#!/usr/bin/perl
# The fault harness's cache-aside reader, in the lease form (see the top of
# t/060_fault_harness.pl).  Prints one line of counts.
#
#   fault_reader.pl DURATION_S RATE NCODES REDIS_PORT PASSWORD_FILE TARGET_FILE PSQL_ERRLOG
use strict; use warnings;
use IO::Socket::INET; use IO::Select; use IPC::Open2; use Time::HiRes qw(time sleep);
$SIG{PIPE} = 'IGNORE';
my ($dur, $rate, $ncodes, $rport, $pwfile, $target, $errlog) = @ARGV;
my $end = time() + $dur;
my %n = map { $_ => 0 } qw(reads hits misses leases fills fill_skipped redis_err pg_err);
my $seq = 0;
my $cas = q{if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'EX', 300) return 1 end return 0};
my $release = q{if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end return 0};

sub slurp1
{
	open my $f, '<', $_[0] or return '';
	local $/;
	my $s = <$f> // '';
	chomp $s;
	return $s;
}

# Redis: a minimal RESP client; every reply awaited at most 1 s
my ($sock, $rbuf);
sub rdrop { close $sock if $sock; undef $sock }
sub rfill
{
	return 0 unless IO::Select->new($sock)->can_read(1);
	my $k = sysread($sock, $rbuf, 65536, length $rbuf);
	return $k ? 1 : 0;
}
sub rline
{
	my $i;
	until (($i = index($rbuf, "\r\n")) >= 0) { rfill() or return undef }
	my $l = substr($rbuf, 0, $i);
	substr($rbuf, 0, $i + 2, '');
	return $l;
}
# { v => value } or { err => message }; undef on an I/O failure or timeout
sub rreply
{
	my $l = rline() // return undef;
	my ($t, $v) = (substr($l, 0, 1), substr($l, 1));
	return { v => $v } if $t eq '+' || $t eq ':';
	return { err => $v } if $t eq '-';
	return undef unless $t eq '$';
	return { v => undef } if $v < 0;
	while (length($rbuf) < $v + 2) { rfill() or return undef }
	my $s = substr($rbuf, 0, $v);
	substr($rbuf, 0, $v + 2, '');
	return { v => $s };
}
sub rsend
{
	my $msg = join '', map { '*' . @$_ . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @$_) } @_;
	my $w = syswrite($sock, $msg);
	return defined $w && $w == length $msg;
}
sub rconnect
{
	$sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $rport,
		Proto => 'tcp', Timeout => 1) or return 0;
	$rbuf = '';
	my $pw = slurp1($pwfile);
	# one write: AUTH (its error ignored: Redis may have no password yet)
	# and the name the harness tells the readers apart by
	my @cmds = ((length $pw ? ([ 'AUTH', $pw ]) : ()), [ 'CLIENT', 'SETNAME', 'ec-reader' ]);
	my $ok = rsend(@cmds);
	my $r;
	$r = rreply() for 1 .. ($ok ? scalar @cmds : 0);
	return 1 if $ok && $r && !defined $r->{err};
	rdrop();
	return 0;
}
# one command; undef after an I/O failure, a timeout or an error reply
# (the connection is dropped and made again next time)
sub rcmd
{
	if (!$sock && !rconnect()) { $n{redis_err}++; return undef }
	my $r = rsend([@_]) ? rreply() : undef;
	if (!$r || defined $r->{err}) { $n{redis_err}++; rdrop(); return undef }
	return $r;
}

# PostgreSQL: one psql kept open, reopened (at most every 100 ms) after it
# exits or a query takes over 5 s
my ($ppid, $pin, $pout, $pbuf, $pnext) = (0, undef, undef, '', 0);
sub pdrop
{
	$n{pg_err}++;
	return unless $ppid;
	kill 'KILL', $ppid;
	waitpid $ppid, 0;
	close $pin; close $pout;
	$ppid = 0;
	$pnext = time() + 0.1;
}
sub pg_row
{
	my ($code) = @_;
	unless ($ppid)
	{
		if (time() < $pnext) { $n{pg_err}++; return undef }
		my ($host, $port) = split ' ', slurp1($target);
		$ppid = open2($pout, $pin, 'sh', '-c',
			qq{exec psql -X -At -q -h '$host' -p $port -d postgres 2>>'$errlog'});
		$pbuf = '';
	}
	print $pin "SELECT row_to_json(e)::text FROM app.entity e WHERE code = '$code';\n\\echo __end__\n";
	my $deadline = time() + 5;
	while (index($pbuf, "__end__\n") < 0)
	{
		my $left = $deadline - time();
		unless ($left > 0 && IO::Select->new($pout)->can_read($left)
			&& sysread($pout, $pbuf, 65536, length $pbuf))
		{
			pdrop();
			return undef;
		}
	}
	$pbuf =~ s/^(.*?)__end__\n//s;
	my $row = $1;
	chomp $row;
	if ($row eq '' || $row =~ /\n/) { $n{pg_err}++; return undef }
	return $row;
}

# one read; false after an error
sub read_one
{
	my $code = 'c' . (1 + int rand $ncodes);
	my $key = "entity:metadata:$code";
	$n{reads}++;
	my $r = rcmd('GET', $key) // return 0;
	if (defined $r->{v} && $r->{v} !~ /^lease:/) { $n{hits}++; return 1 }
	$n{misses}++;
	my $lease = sprintf 'lease:%d:%d:%d', $$, ++$seq, int rand 1e9;
	$r = rcmd('SET', $key, $lease, 'NX', 'PX', '2000') // return 0;
	return 1 unless defined $r->{v};    # another reader's lease, or filled
	$n{leases}++;
	my $row = pg_row($code);
	unless (defined $row)
	{
		rcmd('EVAL', $release, '1', $key, $lease);
		return 0;
	}
	$r = rcmd('EVAL', $cas, '1', $key, $lease, $row) // return 0;
	# 0: the lease was deleted (an invalidation arrived) or expired
	$n{$r->{v} ? 'fills' : 'fill_skipped'}++;
	return 1;
}

my $next = time();
while (time() < $end)
{
	sleep 0.1 unless read_one();
	$next += 1 / $rate;
	my $d = $next - time();
	if ($d > 0) { sleep $d }
	elsif ($d < -1) { $next = time() }
}
if ($ppid) { kill 'KILL', $ppid; waitpid $ppid, 0 }
print join(' ', map { "$_=$n{$_}" } sort keys %n), "\n";
