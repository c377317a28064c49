# ALTER EXTENSION entity_cache UPDATE from every earlier version gives the
# same objects as a fresh install of the newest, and keeps the queued rows.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntityCacheTest;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
# the worker serves 'postgres' and Redis is unreachable: rows queued in the
# test databases stay where the test can count them
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'entity_cache'
entity_cache.database = 'postgres'
entity_cache.redis_url = 'redis://127.0.0.1:9/0'
});
$node->start;

my $newest = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'entity_cache'");
my @versions = split /\n/, $node->safe_psql('postgres',
	"SELECT version FROM pg_available_extension_versions WHERE name = 'entity_cache' "
	  . "AND version <> '$newest' ORDER BY string_to_array(version, '.')::int[]");
ok(@versions >= 1, "there are versions before $newest to update from: @versions");

# Every member of the extension with its definition and privileges, and the
# triggers the install put on app.entity: what "the same objects" means.
my $objects_sql = q{
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'entity_cache'),
members AS (
  SELECT d.classid, d.objid, d.objsubid
  FROM pg_depend d, ext
  WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
    AND d.deptype = 'e')
SELECT pg_describe_object(classid, objid, objsubid) || E'\n' ||
  CASE classid
    WHEN 'pg_proc'::regclass THEN
      (SELECT pg_get_functiondef(p.oid) || ' acl=' || coalesce(p.proacl::text, '')
       FROM pg_proc p WHERE p.oid = objid)
    WHEN 'pg_class'::regclass THEN
      (SELECT c.relkind::text || ' acl=' || coalesce(c.relacl::text, '')
         || ' opts=' || coalesce(c.reloptions::text, '')
         || ' replident=' || c.relreplident::text
         || ' cols=' || coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
              || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
              || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), ''), ', ' ORDER BY a.attnum)
            FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
         || ' checks=' || coalesce((SELECT string_agg(pg_get_constraintdef(k.oid), ', ' ORDER BY 1)
            FROM pg_constraint k WHERE k.conrelid = c.oid), '')
         || CASE WHEN c.relkind = 'v' THEN ' view=' || pg_get_viewdef(c.oid) ELSE '' END
       FROM pg_class c WHERE c.oid = objid)
    WHEN 'pg_namespace'::regclass THEN
      (SELECT 'acl=' || coalesce(n.nspacl::text, '') FROM pg_namespace n WHERE n.oid = objid)
    WHEN 'pg_type'::regclass THEN
      (SELECT format_type(t.oid, NULL) FROM pg_type t WHERE t.oid = objid)
    ELSE ''
  END AS obj
FROM members
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
FROM pg_trigger t WHERE t.tgrelid = 'app.entity'::regclass AND NOT t.tgisinternal
ORDER BY 1
};

my $schema = slurp_file("$FindBin::RealBin/../scripts/app_entity.sql");

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', $schema);
$node->safe_psql('fresh', 'CREATE EXTENSION entity_cache');
is($node->safe_psql('fresh',
		"SELECT extversion FROM pg_extension WHERE extname = 'entity_cache'"),
	$newest, "a fresh install is $newest");
my $fresh = $node->safe_psql('fresh', $objects_sql);
like($fresh, qr/table entity_cache\.queue/, 'the object list names the queue');

for my $from (@versions)
{
	my $db = "from_" . ($from =~ s/\./_/gr);
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, $schema);
	$node->safe_psql($db, "CREATE EXTENSION entity_cache VERSION '$from'");

	# rows queued under the old version, by the trigger and by the API
	$node->safe_psql($db, q{
		INSERT INTO app.entity (code, label) VALUES ('u1', 'one'), ('u2', 'two');
		SELECT entity_cache.invalidate_key('manual:key');
	});
	my $queued = $node->safe_psql($db,
		'SELECT string_agg(op::text || key, \',\' ORDER BY key) FROM entity_cache.queue');
	like($queued, qr/kentity:metadata:u1.*kentity:metadata:u2.*kmanual:key/,
		"$from: rows queued before the update");

	$node->safe_psql($db, 'ALTER EXTENSION entity_cache UPDATE');
	is($node->safe_psql($db,
			"SELECT extversion FROM pg_extension WHERE extname = 'entity_cache'"),
		$newest, "$from: updated to $newest");
	is($node->safe_psql($db,
			'SELECT string_agg(op::text || key, \',\' ORDER BY key) FROM entity_cache.queue'),
		$queued, "$from: the queued rows survive the update");

	my $updated = $node->safe_psql($db, $objects_sql);
	is($updated, $fresh, "$from: updated objects are those of a fresh $newest install");

	# and the updated install still captures
	$node->safe_psql($db, "UPDATE app.entity SET label = 'uno' WHERE code = 'u1'");
	ok($node->safe_psql($db,
			"SELECT count(*) FROM entity_cache.queue WHERE key = 'entity:metadata:u1'") >= 1,
		"$from: capture works after the update");
}

$node->stop;
done_testing();
