/*-------------------------------------------------------------------------
 *
 * entity_cache.c
 *	  Module entry point: GUCs, the shared-memory segment, the background
 *	  worker's registration and the after-commit wake-up (its one home:
 *	  whoever queues rows asks for it, this file decides and sets the latch).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "entity_cache.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "common/hashfn.h"
#include "utils/guc.h"
#include "utils/hsearch.h"

#include "redis_url.h"
#include "transport.h"

PG_MODULE_MAGIC;

char	   *ec_database = NULL;
char	   *ec_redis_url = NULL;
char	   *ec_redis_password = NULL;
int			ec_mode = EC_MODE_DELETE;
int			ec_ttl = 300;
int			ec_batch_size = 1000;
int			ec_redis_timeout_ms = 2000;
double		ec_batch_delay_ms = 1.0;
int			ec_notify = EC_NOTIFY_APPLIED;
int			ec_redelete_delay_ms = 100;
int			ec_redelete_steps = 4;

/* TLS and Sentinel (issue 11) */
char	   *ec_redis_tls_ca_file = NULL;
char	   *ec_redis_tls_cert_file = NULL;
char	   *ec_redis_tls_key_file = NULL;
int			ec_redis_tls_verify = EC_TLS_VERIFY_FULL;
char	   *ec_redis_sentinel_password = NULL;

EcShared   *ec_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const struct config_enum_entry mode_options[] = {
	{"delete", EC_MODE_DELETE, false},
	{"refresh", EC_MODE_REFRESH, false},
	{NULL, 0, false}
};

/*
 * on/true mean applied: in 1.0, on meant "notify", and the listener that
 * asked for that wants to hear of a key once it is safe to refill it.
 */
static const struct config_enum_entry notify_options[] = {
	{"applied", EC_NOTIFY_APPLIED, false},
	{"commit", EC_NOTIFY_COMMIT, false},
	{"off", EC_NOTIFY_OFF, false},
	{"on", EC_NOTIFY_APPLIED, true},
	{"true", EC_NOTIFY_APPLIED, true},
	{"yes", EC_NOTIFY_APPLIED, true},
	{"1", EC_NOTIFY_APPLIED, true},
	{"false", EC_NOTIFY_OFF, true},
	{"no", EC_NOTIFY_OFF, true},
	{"0", EC_NOTIFY_OFF, true},
	{NULL, 0, false}
};

static const struct config_enum_entry tls_verify_options[] = {
	{"full", EC_TLS_VERIFY_FULL, false},
	{"ca", EC_TLS_VERIFY_CA, false},
	{"none", EC_TLS_VERIFY_NONE, false},
	{NULL, 0, false}
};

void		_PG_init(void);

static bool
check_redis_url(char **newval, void **extra, GucSource source)
{
	RedisUrl	url;
	const char *err = redis_url_parse(*newval, &url);

	if (err)
	{
		GUC_check_errmsg("invalid entity_cache.redis_url: %s", err);
		GUC_check_errhint("Use redis://[user[:password]@]host[:port][,host[:port]...][/db], rediss://... (TLS), "
						  "redis-sentinel://...?master=NAME, rediss-sentinel://...?master=NAME or unix:///path/redis.sock[?db=N].");
		return false;
	}
	return true;
}

#define EC_MASK "********"

/*
 * GUC_SUPERUSER_ONLY still lets pg_read_all_settings (and so pg_monitor,
 * which status is granted to) read a setting.  The password is for
 * superusers alone: everyone else sees it masked, in the password setting
 * and inside the URL.  Outside a transaction we cannot ask who is asking,
 * so we mask.
 */
static bool
may_see_secrets(void)
{
	return IsTransactionState() && superuser();
}

/* a secret setting as the asker may see it */
static const char *
show_secret(const char *value)
{
	if (value == NULL || value[0] == '\0')
		return "";
	return may_see_secrets() ? value : EC_MASK;
}

static const char *
show_redis_password(void)
{
	return show_secret(ec_redis_password);
}

static const char *
show_redis_tls_key_file(void)
{
	return show_secret(ec_redis_tls_key_file);
}

static const char *
show_redis_sentinel_password(void)
{
	return show_secret(ec_redis_sentinel_password);
}

/* The URL with its password masked, found by the parser the worker uses. */
static const char *
show_redis_url(void)
{
	const char *url = ec_redis_url ? ec_redis_url : "";
	RedisUrl	parsed;

	if (may_see_secrets() || redis_url_parse(url, &parsed) != NULL ||
		parsed.password_len == 0)
		return url;
	return psprintf("%.*s%s%s", (int) parsed.password_off, url, EC_MASK,
					url + parsed.password_off + parsed.password_len);
}

static void
ec_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(EcShared)));
}

static void
ec_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ec_shared = ShmemInitStruct("entity_cache", sizeof(EcShared), &found);
	if (!found)
	{
		memset(ec_shared, 0, sizeof(EcShared));
		SpinLockInit(&ec_shared->mutex);
		pg_atomic_init_u32(&ec_shared->text_changecount, 0);
		ec_shared->worker_procno = -1;
		ConditionVariableInit(&ec_shared->applied_cv);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* TLS and Sentinel (issue 11); the worker reconnects when one changes */
static void
define_tls_sentinel_gucs(void)
{
	DefineCustomStringVariable("entity_cache.redis_tls_ca_file",
							   "CA certificates that sign the Redis server's certificate (PEM).",
							   "Empty: the system trust store.  Used by rediss:// and rediss-sentinel://.",
							   &ec_redis_tls_ca_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("entity_cache.redis_tls_cert_file",
							   "Client certificate for mutual TLS with Redis (PEM).",
							   "Set together with entity_cache.redis_tls_key_file.",
							   &ec_redis_tls_cert_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("entity_cache.redis_tls_key_file",
							   "Private key of the client certificate for mutual TLS with Redis (PEM).",
							   "Only superusers see it.",
							   &ec_redis_tls_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, show_redis_tls_key_file);

	DefineCustomEnumVariable("entity_cache.redis_tls_verify",
							 "How the Redis server's certificate is checked.",
							 "full: chain and host name or IP; ca: chain only; "
							 "none: not at all (a WARNING at each connect).",
							 &ec_redis_tls_verify,
							 EC_TLS_VERIFY_FULL,
							 tls_verify_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("entity_cache.redis_sentinel_password",
							   "Password of the Redis sentinels; empty: the URL's password.",
							   NULL,
							   &ec_redis_sentinel_password,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, show_redis_sentinel_password);
}

/* where the worker connects */
static void
define_connection_gucs(void)
{
	DefineCustomStringVariable("entity_cache.database",
							   "Database whose queue the entity_cache worker applies.",
							   "The database where CREATE EXTENSION entity_cache was run.",
							   &ec_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("entity_cache.redis_url",
							   "Redis server the worker sends invalidations to.",
							   "redis://, rediss:// (TLS), redis-sentinel://, rediss-sentinel:// or unix:// URL; see the README. "
							   "Only superusers see a password in it.",
							   &ec_redis_url,
							   "redis://127.0.0.1:6379/0",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_redis_url, NULL, show_redis_url);

	DefineCustomStringVariable("entity_cache.redis_password",
							   "Redis password; overrides a password in redis_url.",
							   NULL,
							   &ec_redis_password,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, show_redis_password);
}

/* how the worker applies the queue, and who notifies */
static void
define_apply_gucs(void)
{
	DefineCustomEnumVariable("entity_cache.mode",
							 "delete: DEL changed keys; refresh: SET them to the row's JSON.",
							 NULL,
							 &ec_mode,
							 EC_MODE_DELETE,
							 mode_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("entity_cache.ttl",
							"Expiry of keys written in refresh mode.",
							NULL,
							&ec_ttl,
							300, 1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("entity_cache.batch_size",
							"Queue rows applied per Redis round trip.",
							NULL,
							&ec_batch_size,
							1000, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("entity_cache.redis_timeout",
							"Connect and command timeout for Redis.",
							"A Redis that does not answer within it is treated as down.",
							&ec_redis_timeout_ms,
							2000, 10, 600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomRealVariable("entity_cache.batch_delay",
							"Least time between the starts of two batches under load.",
							"After a batch of fewer than 4 keys the worker takes the next commit at once; "
							"after 4 to 7 keys it waits batch_delay, after 8 or more three times as long, "
							"so that under a stream of commits one round trip carries the keys of many.",
							&ec_batch_delay_ms,
							1.0, 0, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("entity_cache.notify",
							 "Who sends NOTIFY entity_cache, '<key>': applied, commit or off.",
							 "applied (on): the worker, once Redis applied the key; commit: the writer, "
							 "at its commit (before Redis is clean); off: nobody.  The worker follows "
							 "the server's (or database's) setting, a session's SET only decides "
							 "whether that session notifies at commit.",
							 &ec_notify,
							 EC_NOTIFY_APPLIED,
							 notify_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("entity_cache.redelete_delay",
							"Apply every applied key again after this delay (0 = off).",
							"UNLINK again in delete mode, read the row again and SET it in refresh "
							"mode: a stale value that a racing cache-aside reader SET after the "
							"first application lives at most this long.",
							&ec_redelete_delay_ms,
							100, 0, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("entity_cache.redelete_steps",
							"How many times every applied key is applied again within redelete_delay.",
							"At redelete_delay, half of it, a quarter, ...: a racing reader's stale value "
							"lives no longer than it took to land after the invalidation.  1 = only at "
							"redelete_delay.  A key whose change committed more than redelete_delay before "
							"it was applied gets none: no racing fill can still land.",
							&ec_redelete_steps,
							4, 1, EC_REDELETE_MAX_STEPS,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
}

static void
register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* a standby never talks to Redis; promotion starts the worker */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "entity_cache");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "entity_cache_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, EC_WORKER_NAME);
	snprintf(worker.bgw_type, BGW_MAXLEN, EC_WORKER_NAME);
	RegisterBackgroundWorker(&worker);
}

void
_PG_init(void)
{
	define_connection_gucs();
	define_apply_gucs();
	define_tls_sentinel_gucs();
	MarkGUCPrefixReserved("entity_cache");
	ec_queue_xact_init();
	ec_utility_init();

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ec_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ec_shmem_startup;

	register_worker();
}

/*
 * Set the worker's latch: after a commit that queued rows, or for sync().
 * Without preloading there is no worker to wake; the queue then waits for
 * one.
 */
void
ec_wake_worker(void)
{
	int			procno;
	Oid			dboid;

	if (ec_shared == NULL)
		return;
	SpinLockAcquire(&ec_shared->mutex);
	procno = ec_shared->worker_procno;
	dboid = ec_shared->worker_dboid;
	SpinLockRelease(&ec_shared->mutex);
	/* a worker serving another database has nothing to do with our rows */
	if (procno >= 0 && dboid == MyDatabaseId)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/*
 * Does a worker serve this database (whether or not it runs right now)?
 * If not, *why (when given) says so in words for status.worker_note.  One
 * database is served: the one entity_cache.database names.
 */
bool
ec_database_served(const char **why)
{
	char	   *dbname;

	if (ec_shared == NULL)
	{
		if (why)
			*why = "entity_cache is not in shared_preload_libraries: no worker runs";
		return false;
	}
	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || strcmp(dbname, ec_database) != 0)
	{
		if (why)
			*why = psprintf("no worker serves this database: entity_cache.database is \"%s\"",
							ec_database);
		return false;
	}
	return true;
}

/* Is this process the worker (not a backend with a Redis connection)? */
bool
ec_am_worker(void)
{
	bool		mine;

	if (ec_shared == NULL)
		return false;
	SpinLockAcquire(&ec_shared->mutex);
	mine = ec_shared->worker_pid == MyProcPid;
	SpinLockRelease(&ec_shared->mutex);
	return mine;
}

/*
 * Write one of EcShared's strings (the worker only, so writers never race
 * each other).  The change count is odd while the copy is under way; the
 * atomic increments are full barriers.
 */
void
ec_shared_set_text(char *field, size_t size, const char *value)
{
	pg_atomic_fetch_add_u32(&ec_shared->text_changecount, 1);
	strlcpy(field, value, size);
	pg_atomic_fetch_add_u32(&ec_shared->text_changecount, 1);
}

/* Read one of EcShared's strings without a lock (see EcShared). */
void
ec_shared_get_text(char *dst, const char *field, size_t size)
{
	for (;;)
	{
		uint32		before = pg_atomic_read_u32(&ec_shared->text_changecount);
		uint32		after;

		pg_read_barrier();
		memcpy(dst, field, size);
		pg_read_barrier();
		after = pg_atomic_read_u32(&ec_shared->text_changecount);
		if (before == after && (before & 1) == 0)
			break;
		pg_spin_delay();
	}
	dst[size - 1] = '\0';
}

/*
 * Hash tables keyed by a NUL-terminated string that the entry points to
 * (its first field, a char *): the queue's per-transaction dedup, the
 * worker's pending redeletes, verify()'s sets of keys.  dynahash's
 * HASH_STRINGS wants the characters inside the entry, of a fixed size;
 * keys here are any length.
 */
static uint32
cstring_ptr_hash(const void *key, Size keysize)
{
	const char *s = *(char *const *) key;

	return hash_bytes((const unsigned char *) s, strlen(s));
}

static int
cstring_ptr_match(const void *key1, const void *key2, Size keysize)
{
	return strcmp(*(char *const *) key1, *(char *const *) key2);
}

HTAB *
ec_cstring_hash_create(const char *name, long nelem, Size entrysize,
					   MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(char *);
	ctl.entrysize = entrysize;
	ctl.hash = cstring_ptr_hash;
	ctl.match = cstring_ptr_match;
	ctl.hcxt = cxt;
	return hash_create(name, nelem, &ctl,
					   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}
