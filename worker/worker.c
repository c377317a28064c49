/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The "entity_cache worker" background worker: connect to Redis, apply
 *	  the queue batch by batch, sleep on the latch that committing writers
 *	  set, and back off while Redis is unreachable.
 *
 * Modelled on src/test/modules/worker_spi and contrib/pg_prewarm's
 * autoprewarm.  An ERROR that escapes a batch ends the process; the
 * postmaster starts it again one second later and the rows it was
 * applying are still queued.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "entity_cache.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "drain.h"
#include "keys.h"
#include "redelete.h"
#include "redis_client.h"

/* safety net: poll this often even if no commit sets the latch */
#define POLL_INTERVAL_MS 1000
#define NOT_INSTALLED_POLL_MS 5000
#define DATABASE_POLL_MS 2000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/*
 * The pause after a batch follows the load.  A batch of fewer than
 * SMALL_BATCH keys means commits are sparse: the next one is taken at once,
 * which is what keeps latency low at a modest rate.  From SMALL_BATCH keys
 * on the worker waits batch_delay, from BUSY_BATCH keys (about 8,000 commits
 * a second at the default) BUSY_DELAY_FACTOR times as long: under heavy
 * writing fewer and larger batches, since each batch is a transaction of
 * the worker's that takes CPU from the writers.
 */
#define SMALL_BATCH 4
#define BUSY_BATCH 8
#define BUSY_DELAY_FACTOR 3

/*
 * Waits that must not end at each commit (the pause, the backoff) leave
 * the latch out and wake at least this often to see a SIGTERM or a reload
 * (the postmaster's death ends any wait at once).
 */
#define RESPONSIVE_MS 10

/* what the main loop carries from one batch to the next */
typedef struct WorkerState
{
	char	   *url;			/* the connection's settings, to notice a change */
	char	   *password;
	int			timeout_ms;
	long		backoff;		/* current reconnection backoff, ms */
	bool		said_not_installed;
	StringInfoData err;
} WorkerState;

static void
set_connected(bool connected)
{
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->redis_connected = connected;
	SpinLockRelease(&ec_shared->mutex);
}

/*
 * Record an error for entity_cache.status and the server log.  Repeats of
 * the previous message are counted but logged only every so often, so a
 * long Redis outage does not flood the log.
 */
void
ec_set_error(const char *fmt,...)
{
	static char prev[EC_LAST_ERROR_LEN];
	static TimestampTz prev_logged = 0;
	char		msg[EC_LAST_ERROR_LEN];
	va_list		ap;
	TimestampTz now = GetCurrentTimestamp();

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	ec_shared_set_text(ec_shared->last_error, sizeof(ec_shared->last_error), msg);
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->errors_total++;
	ec_shared->last_error_at = now;
	SpinLockRelease(&ec_shared->mutex);

	if (strcmp(prev, msg) != 0 ||
		TimestampDifferenceExceeds(prev_logged, now, 60 * 1000))
	{
		ereport(LOG, (errmsg("entity_cache: %s", msg)));
		strlcpy(prev, msg, sizeof(prev));
		prev_logged = now;
	}
}

static void
worker_detach(int code, Datum arg)
{
	ec_redis_disconnect();
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->worker_pid = 0;
	ec_shared->worker_procno = -1;
	ec_shared->worker_dboid = InvalidOid;
	ec_shared->redis_connected = false;
	ec_shared->redelete_pending = 0;	/* lost with this process */
	SpinLockRelease(&ec_shared->mutex);
}

static void
worker_attach(void)
{
	SpinLockAcquire(&ec_shared->mutex);
	if (ec_shared->worker_pid != 0 && ec_shared->worker_pid != MyProcPid)
	{
		pid_t		other = ec_shared->worker_pid;

		SpinLockRelease(&ec_shared->mutex);
		ereport(ERROR,
				(errmsg("another entity_cache worker is already running with PID %d", (int) other)));
	}
	ec_shared->worker_pid = MyProcPid;
	ec_shared->worker_procno = MyProc->pgprocno;
	ec_shared->redis_connected = false;
	SpinLockRelease(&ec_shared->mutex);
	before_shmem_exit(worker_detach, (Datum) 0);
}

/*
 * Wait for a commit (our latch) or ms, whichever comes first.  The latch is
 * reset after the wait, before the batch that follows: a commit during the
 * batch sets it again and the next wait ends at once.
 */
static void
wait_for_commits(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Wait until deadline whatever commits do: every committing writer sets
 * our latch, so a wait on it would end at the next commit, turning a
 * reconnection backoff into a burst of connection attempts or a batch pause
 * into a busy loop.  The latch stays set for the wait that follows.  A
 * config reload (a new URL or password deserves a prompt retry) or an
 * interrupt ends it early.
 */
static void
wait_until(TimestampTz deadline)
{
	while (!ConfigReloadPending)
	{
		long		left_us;
		long		secs;
		int			usecs;

		TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
		left_us = secs * 1000000L + usecs;
		if (left_us <= 0)
			break;
		/* WaitLatch counts in ms: round up, a pause is never cut short */
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min((left_us + 999) / 1000, RESPONSIVE_MS), PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
		/* a backoff can last seconds: keep the commits' age known */
		ec_redelete_note_horizon();
	}
}

static void
backoff_wait(long ms)
{
	wait_until(TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms));
}

static long
next_backoff(long backoff)
{
	return Min(Max(backoff * 2, BACKOFF_MIN_MS), BACKOFF_MAX_MS);
}

/*
 * Record a failure for status and the log, then wait out the next step of
 * the backoff.  Returns the new backoff.
 */
static long
fail_and_back_off(const char *msg, long backoff)
{
	ec_set_error("%s", msg);
	set_connected(ec_redis_is_connected());
	backoff = next_backoff(backoff);
	backoff_wait(backoff);
	return backoff;
}

/*
 * Does entity_cache.database exist and accept connections?  Read with a
 * plain scan of pg_database, as the autovacuum launcher does: a process
 * connected to no database cannot load the indexes a syscache lookup uses.
 */
static bool
database_ready(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	bool		ready = false;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		/* -2: a DROP DATABASE was interrupted; connecting would fail */
		if (strcmp(NameStr(db->datname), ec_database) == 0)
		{
			ready = db->datallowconn && db->datconnlimit != -2;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return ready;
}

/*
 * entity_cache.database does not exist (or refuses connections): wait for
 * it quietly instead of failing once a second.  A process connects to one
 * database at most once, so this one connects to none (it can still read
 * the shared catalog pg_database) and, once the database is there, exits
 * to be started again by the postmaster, which then connects to it.  The
 * log says so once, however often the worker is restarted meanwhile.
 */
static void
wait_for_database(void)
{
	bool		say;

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname(EC_WORKER_NAME);
	SpinLockAcquire(&ec_shared->mutex);
	say = !ec_shared->said_missing;
	ec_shared->said_missing = true;
	SpinLockRelease(&ec_shared->mutex);
	if (say)
		ereport(LOG,
				(errmsg("entity_cache worker: database \"%s\" does not exist or does not accept connections; waiting for it",
						ec_database),
				 errhint("Create the database, or set entity_cache.database and restart the server.")));

	while (!database_ready())
	{
		wait_for_commits(DATABASE_POLL_MS);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}

	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->database_missing = false;
	ec_shared->said_missing = false;
	SpinLockRelease(&ec_shared->mutex);
	ereport(LOG,
			(errmsg("entity_cache worker: database \"%s\" is there now; restarting to serve it",
					ec_database)));
	proc_exit(1);
}

/*
 * Connect to entity_cache.database, or wait for it.  A missing database
 * makes BackgroundWorkerInitializeConnection() exit with FATAL, which no
 * handler can catch: so the flag is set before trying and cleared after,
 * and the next start, finding it set, waits instead of trying again.
 */
static void
connect_or_wait(void)
{
	bool		missing;

	SpinLockAcquire(&ec_shared->mutex);
	missing = ec_shared->database_missing;
	ec_shared->database_missing = true;
	SpinLockRelease(&ec_shared->mutex);
	if (missing)
		wait_for_database();

	BackgroundWorkerInitializeConnection(ec_database, NULL, 0);
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->database_missing = false;
	ec_shared->said_missing = false;
	SpinLockRelease(&ec_shared->mutex);
}

/* Apply a reload, and drop the connection if its settings changed. */
static void
reload_and_reconnect_on_change(WorkerState *st)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}

	/* a changed URL, password, timeout or TLS setting: a new connection */
	if (st->url != NULL && strcmp(st->url, ec_redis_url) == 0 &&
		strcmp(st->password, ec_redis_password) == 0 &&
		st->timeout_ms == ec_redis_timeout_ms &&
		!ec_redis_tls_settings_changed())
		return;
	if (st->url)
	{
		pfree(st->url);
		pfree(st->password);
	}
	st->url = MemoryContextStrdup(TopMemoryContext, ec_redis_url);
	st->password = MemoryContextStrdup(TopMemoryContext, ec_redis_password);
	st->timeout_ms = ec_redis_timeout_ms;
	ec_redis_disconnect();
	set_connected(false);
	st->backoff = 0;
}

/* Connect to Redis unless connected; false (after the backoff) if that failed. */
static bool
ensure_connected(WorkerState *st)
{
	resetStringInfo(&st->err);
	if (ec_redis_is_connected())
		return true;
	if (!ec_redis_connect(st->url, st->password, st->timeout_ms, &st->err))
	{
		st->backoff = fail_and_back_off(st->err.data, st->backoff);
		return false;
	}
	set_connected(true);
	ereport(LOG, (errmsg("entity_cache worker connected to Redis")));
	return true;
}

/* Tell sync() and status what the last batch did. */
static void
publish_progress(uint64 napplied, TimestampTz drained_as_of)
{
	if (napplied == 0 && drained_as_of == 0)
		return;
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->applied_total += napplied;
	if (drained_as_of > ec_shared->drained_as_of)
		ec_shared->drained_as_of = drained_as_of;
	SpinLockRelease(&ec_shared->mutex);
	ConditionVariableBroadcast(&ec_shared->applied_cv);
}

/*
 * Apply one batch.  Returns how many rows it applied, or -1 if there was
 * nothing to apply because of a failure or a missing extension (the wait
 * that suits that has been done).
 */
static int64
drain_once(WorkerState *st)
{
	uint64		napplied;
	TimestampTz drained_as_of = 0;
	EcDrainResult res;

	res = ec_drain_batch(ec_batch_size, &napplied, &drained_as_of, &st->err);
	if (res == EC_DRAIN_NOT_INSTALLED)
	{
		/*
		 * Not an error: the extension may not be created yet, or was just
		 * dropped.  The first commit that queues a row sets our latch.
		 */
		if (!st->said_not_installed)
			ereport(LOG,
					(errmsg("entity_cache worker: waiting for CREATE EXTENSION entity_cache in database \"%s\"",
							ec_database)));
		st->said_not_installed = true;
		wait_for_commits(NOT_INSTALLED_POLL_MS);
		return -1;
	}
	if (res == EC_DRAIN_ERROR)
	{
		/* on a cluster, the rows of the nodes that answered went through */
		publish_progress(napplied, 0);
		st->backoff = fail_and_back_off(st->err.data, st->backoff);
		return -1;
	}
	st->said_not_installed = false;
	st->backoff = 0;
	publish_progress(napplied, drained_as_of);
	return (int64) napplied;
}

/*
 * Between batches.  A full batch means there is more: go again at once.
 * Otherwise pause as the load says (see SMALL_BATCH), counted from the
 * start of the batch, then wait for the next commit.
 */
static void
pause_after_batch(TimestampTz batch_start, uint64 napplied)
{
	double		delay_ms = 0;

	if (napplied >= (uint64) ec_batch_size)
		return;
	if (napplied >= BUSY_BATCH)
		delay_ms = ec_batch_delay_ms * BUSY_DELAY_FACTOR;
	else if (napplied >= SMALL_BATCH)
		delay_ms = ec_batch_delay_ms;
	if (delay_ms > 0)
	{
		wait_until(batch_start + (TimestampTz) (delay_ms * 1000.0));	/* in us */

		/*
		 * Commits during the pause set the latch; the next batch, which
		 * follows at once, takes them.  A commit after this reset sets it
		 * again.
		 */
		ResetLatch(MyLatch);
		return;
	}
	/* the next commit, or the next redelete that falls due */
	wait_for_commits(ec_redelete_next_wait(POLL_INTERVAL_MS));
}

static void
worker_init(void)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (ec_shared == NULL)
		ereport(ERROR,
				(errmsg("entity_cache must be loaded via shared_preload_libraries")));
	connect_or_wait();
	worker_attach();
	pgstat_report_appname(EC_WORKER_NAME);
	/* the text it parses back reads as the capture trigger wrote it */
	ec_canonical_settings();
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->worker_dboid = MyDatabaseId;
	SpinLockRelease(&ec_shared->mutex);

	/*
	 * Losing the removal of applied rows in a crash only applies them again,
	 * so the worker need not wait for its own WAL flushes.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	ereport(LOG, (errmsg("entity_cache worker started for database \"%s\"", ec_database)));
}

void
entity_cache_worker_main(Datum main_arg)
{
	WorkerState st = {0};

	worker_init();
	initStringInfo(&st.err);

	for (;;)
	{
		TimestampTz batch_start;
		int64		napplied;

		reload_and_reconnect_on_change(&st);
		ec_redelete_note_horizon();
		if (!ensure_connected(&st))
			continue;
		batch_start = GetCurrentTimestamp();
		napplied = drain_once(&st);
		/*
		 * Keys applied redelete_delay ago, once more.  Failed entries are
		 * due again at once, and an error reply (a read-only Redis) keeps
		 * the connection: back off as after a failed batch, or this loop
		 * would resend them as fast as Redis answers.
		 */
		resetStringInfo(&st.err);
		if (!ec_redelete_run_due(&st.err))
		{
			st.backoff = fail_and_back_off(st.err.data, st.backoff);
			continue;
		}
		if (napplied >= 0)
			pause_after_batch(batch_start, (uint64) napplied);
	}
}
