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
#include "utils/timestamp.h"

#include "drain.h"
#include "redis_client.h"

/* safety net: poll this often even if no commit sets the latch */
#define POLL_INTERVAL_MS 1000
#define NOT_INSTALLED_POLL_MS 5000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/*
 * A batch of this many keys or more (about 8,000 commits a second at the
 * default batch_delay) stretches the delay before the next batch by this
 * factor.  Below it, latency wins; above it, fewer and larger batches.
 */
#define BUSY_BATCH 8
#define BUSY_DELAY_FACTOR 3

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

	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->errors_total++;
	ec_shared->last_error_at = now;
	strlcpy(ec_shared->last_error, msg, sizeof(ec_shared->last_error));
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

static void
wait_ms(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Wait out a reconnection backoff.  Every committing writer sets our latch,
 * so a plain wait_ms() would end at the next commit and turn a burst of
 * writes into a burst of connection attempts against a Redis that is down
 * or stalled.  Only the deadline, a config reload (a new URL or password
 * deserves a prompt retry) or an interrupt end this wait.
 */
static void
backoff_wait(long ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	while (!ConfigReloadPending)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		if (left <= 0)
			break;
		wait_ms(left);
	}
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

void
entity_cache_worker_main(Datum main_arg)
{
	long		backoff = 0;
	char	   *url = NULL;
	char	   *password = NULL;
	int			timeout_ms = 0;
	bool		said_not_installed = false;
	StringInfoData err;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (ec_shared == NULL)
		ereport(ERROR,
				(errmsg("entity_cache must be loaded via shared_preload_libraries")));
	worker_attach();

	BackgroundWorkerInitializeConnection(ec_database, NULL, 0);
	pgstat_report_appname(EC_WORKER_NAME);
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->worker_dboid = MyDatabaseId;
	SpinLockRelease(&ec_shared->mutex);

	/*
	 * Losing the removal of applied rows in a crash only applies them again,
	 * so the worker need not wait for its own WAL flushes.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	ereport(LOG, (errmsg("entity_cache worker started for database \"%s\"", ec_database)));
	initStringInfo(&err);

	for (;;)
	{
		uint64		napplied;
		TimestampTz drained_as_of = 0;
		TimestampTz batch_start;
		EcDrainResult res;

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* a changed URL, password, timeout or TLS setting: a new connection */
		if (url == NULL || strcmp(url, ec_redis_url) != 0 ||
			strcmp(password, ec_redis_password) != 0 ||
			timeout_ms != ec_redis_timeout_ms ||
			ec_redis_tls_settings_changed())
		{
			if (url)
			{
				pfree(url);
				pfree(password);
			}
			url = MemoryContextStrdup(TopMemoryContext, ec_redis_url);
			password = MemoryContextStrdup(TopMemoryContext, ec_redis_password);
			timeout_ms = ec_redis_timeout_ms;
			ec_redis_disconnect();
			set_connected(false);
			backoff = 0;
		}

		resetStringInfo(&err);
		if (!ec_redis_is_connected())
		{
			if (!ec_redis_connect(url, password, timeout_ms, &err))
			{
				backoff = fail_and_back_off(err.data, backoff);
				continue;
			}
			set_connected(true);
			ereport(LOG, (errmsg("entity_cache worker connected to Redis")));
		}

		batch_start = GetCurrentTimestamp();
		res = ec_drain_batch(ec_batch_size, &napplied, &drained_as_of, &err);
		if (res == EC_DRAIN_NOT_INSTALLED)
		{
			/* not an error: the extension may simply not be created yet */
			if (!said_not_installed)
				ereport(LOG,
						(errmsg("entity_cache worker: waiting for CREATE EXTENSION entity_cache in database \"%s\"",
								ec_database)));
			said_not_installed = true;
			wait_ms(NOT_INSTALLED_POLL_MS);
			continue;
		}
		if (res == EC_DRAIN_ERROR)
		{
			/* on a cluster, the rows of the nodes that answered went through */
			if (napplied > 0)
			{
				SpinLockAcquire(&ec_shared->mutex);
				ec_shared->applied_total += napplied;
				SpinLockRelease(&ec_shared->mutex);
			}
			backoff = fail_and_back_off(err.data, backoff);
			continue;
		}

		backoff = 0;
		if (napplied > 0 || drained_as_of != 0)
		{
			SpinLockAcquire(&ec_shared->mutex);
			ec_shared->applied_total += napplied;
			if (drained_as_of > ec_shared->drained_as_of)
				ec_shared->drained_as_of = drained_as_of;
			SpinLockRelease(&ec_shared->mutex);
			ConditionVariableBroadcast(&ec_shared->applied_cv);
		}
		/* a full batch means there is probably more: go again at once */
		if (napplied >= (uint64) ec_batch_size)
			continue;

		/*
		 * Writers that commit while we sleep set the latch; let the batch
		 * delay pass first so that the next batch takes them all.  A batch
		 * that found nothing means the worker is idle: no delay then.  Under
		 * heavy writing (a batch of BUSY_BATCH keys or more) the delay is
		 * longer: each batch is a transaction of the worker's, and on a busy
		 * server those transactions take CPU from the writers.
		 */
		if (napplied > 0 && ec_batch_delay_ms > 0)
		{
			long		delay_us = (long) (ec_batch_delay_ms * 1000.0 *
										   (napplied >= BUSY_BATCH ? BUSY_DELAY_FACTOR : 1));
			long		spent_us;
			long		secs;
			int			usecs;

			TimestampDifference(batch_start, GetCurrentTimestamp(), &secs, &usecs);
			spent_us = secs * 1000000L + usecs;
			if (spent_us < delay_us)
				pg_usleep(delay_us - spent_us);
			CHECK_FOR_INTERRUPTS();
		}
		wait_ms(POLL_INTERVAL_MS);
	}
}
