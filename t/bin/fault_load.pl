#!/usr/bin/perl
# The fault harness's write load (t/060_fault_harness.pl): pgbench in
# 1-second segments until the duration is over, so the load goes on across
# server restarts; each segment reads the server's "host port" from the
# target file, so it follows a promotion.  Prints one line of counts.
#
#   fault_load.pl DURATION_S RATE TARGET_FILE PGBENCH_SCRIPT
use strict; use warnings; use Time::HiRes qw(time sleep);
my ($dur, $rate, $target, $script) = @ARGV;
my $end = time() + $dur;
my ($processed, $failed, $connfail, $aborted, $segments) = (0, 0, 0, 0, 0);
while ($end - time() > 0.3)
{
	open my $tf, '<', $target or die "$target: $!";
	my ($host, $port) = split ' ', scalar <$tf>;
	close $tf;
	my $out = `pgbench -n -h '$host' -p $port -c 2 -j 1 -R $rate -T 1 -f '$script' postgres 2>&1`;
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
