# The fault harness (t/060_fault_harness.pl) with the worker connected to
# Redis over TLS (rediss://, the server's certificate verified against a
# CA the test makes): every fault, same checks (0 lost, 0 stale).
use strict;
use warnings;
use FindBin;
# loaded here, not only by the harness: their INIT blocks (temporary
# directories, port allocation) run only for modules loaded at startup
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

$ENV{EC_FAULT_TLS} = 1;
my $harness = "$FindBin::RealBin/060_fault_harness.pl";
do $harness;
die "$harness: $@" if $@;
