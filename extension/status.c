/*-------------------------------------------------------------------------
 *
 * status.c
 *	  The row behind the entity_cache.status view: what the worker
 *	  publishes in shared memory (see EcShared for its locking) and the
 *	  queue as this database sees it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "entity_cache.h"

#include "access/htup_details.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entity_cache_status);

/*
 * Columns of _status() in version 1.1.  Version 1.0's function has the
 * first eight: heap_form_tuple reads only as many as the caller's row type
 * has, so the library serves both until ALTER EXTENSION UPDATE.
 */
typedef enum StatusColumn
{
	COL_WORKER_PID,
	COL_REDIS_CONNECTED,
	COL_QUEUE_DEPTH,
	COL_OLDEST_PENDING_AGE,
	COL_APPLIED_TOTAL,
	COL_ERRORS_TOTAL,
	COL_LAST_ERROR,
	COL_LAST_ERROR_AT,
	COL_DATABASE,
	COL_WORKER_NOTE,
	COL_REDIS_NODE,
	COL_REDIS_TLS,
	COL_NOTIFY_SKIPPED,
	COL_REFRESH_FAILED,
	COL_REDELETE_PENDING,
	COL_CLUSTER_NODES,
	COL_CLUSTER_SLOTS_LOADED_AT,
	COL_CLUSTER_REDIRECTIONS,
	STATUS_COLUMNS
} StatusColumn;

typedef struct StatusRow
{
	Datum		values[STATUS_COLUMNS];
	bool		nulls[STATUS_COLUMNS];
} StatusRow;

static void
set_col(StatusRow *row, StatusColumn col, Datum value)
{
	row->values[col] = value;
	row->nulls[col] = false;
}

/* A copy of EcShared's scalars, taken under its spinlock. */
typedef struct SharedScalars
{
	pid_t		pid;
	bool		connected;
	bool		tls;
	uint64		applied;
	uint64		errors;
	TimestampTz error_at;
	uint64		refresh_failed;
	uint64		notify_skipped;
	uint64		redelete_pending;
	int			cluster_nodes;
	TimestampTz cluster_loaded_at;
	uint64		redirections;
} SharedScalars;

static void
read_scalars(SharedScalars *s)
{
	SpinLockAcquire(&ec_shared->mutex);
	s->pid = ec_shared->worker_pid;
	s->connected = ec_shared->redis_connected;
	s->tls = ec_shared->redis_tls;
	s->applied = ec_shared->applied_total;
	s->errors = ec_shared->errors_total;
	s->error_at = ec_shared->last_error_at;
	s->refresh_failed = ec_shared->refresh_failed;
	s->notify_skipped = ec_shared->notify_skipped;
	s->redelete_pending = ec_shared->redelete_pending;
	s->cluster_nodes = ec_shared->cluster_nodes;
	s->cluster_loaded_at = ec_shared->cluster_slots_loaded_at;
	s->redirections = ec_shared->cluster_redirections;
	SpinLockRelease(&ec_shared->mutex);
}

/* The worker's columns, for the database it serves. */
static void
status_worker(StatusRow *row)
{
	SharedScalars s;
	char		text[Max(EC_LAST_ERROR_LEN, EC_REDIS_NODE_LEN)];

	read_scalars(&s);
	if (s.pid != 0)
		set_col(row, COL_WORKER_PID, Int32GetDatum(s.pid));
	else
		set_col(row, COL_WORKER_NOTE,
				CStringGetTextDatum("the worker is not running; the postmaster starts it again within a second"));
	set_col(row, COL_REDIS_CONNECTED, BoolGetDatum(s.pid != 0 && s.connected));
	set_col(row, COL_APPLIED_TOTAL, Int64GetDatum((int64) s.applied));
	set_col(row, COL_ERRORS_TOTAL, Int64GetDatum((int64) s.errors));
	set_col(row, COL_NOTIFY_SKIPPED, Int64GetDatum((int64) s.notify_skipped));
	set_col(row, COL_REFRESH_FAILED, Int64GetDatum((int64) s.refresh_failed));
	set_col(row, COL_REDELETE_PENDING, Int64GetDatum((int64) s.redelete_pending));
	if (s.error_at != 0)
	{
		ec_shared_get_text(text, ec_shared->last_error, EC_LAST_ERROR_LEN);
		set_col(row, COL_LAST_ERROR, CStringGetTextDatum(text));
		set_col(row, COL_LAST_ERROR_AT, TimestampTzGetDatum(s.error_at));
	}
	/* the node and TLS of the current connection; NULL while none */
	ec_shared_get_text(text, ec_shared->redis_node, EC_REDIS_NODE_LEN);
	if (s.pid != 0 && s.connected && text[0])
	{
		set_col(row, COL_REDIS_NODE, CStringGetTextDatum(text));
		set_col(row, COL_REDIS_TLS, BoolGetDatum(s.tls));
	}
	/* NULL unless the worker serves a Redis Cluster (worker/cluster.c) */
	if (s.pid != 0 && s.cluster_nodes > 0)
	{
		set_col(row, COL_CLUSTER_NODES, Int32GetDatum(s.cluster_nodes));
		set_col(row, COL_CLUSTER_SLOTS_LOADED_AT, TimestampTzGetDatum(s.cluster_loaded_at));
		set_col(row, COL_CLUSTER_REDIRECTIONS, Int64GetDatum((int64) s.redirections));
	}
}

/* queue_depth and oldest_pending_age, as this transaction sees the queue */
static void
status_queue(StatusRow *row)
{
	bool		isnull;
	Datum		age;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT count(*), pg_catalog.clock_timestamp() - min(queued_at) "
					"FROM entity_cache.queue", true, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read entity_cache.queue: %s",
			 SPI_result_code_string(SPI_result));
	set_col(row, COL_QUEUE_DEPTH,
			SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	age = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull)
		set_col(row, COL_OLDEST_PENDING_AGE,
				PointerGetDatum(SPI_datumTransfer(age, false, sizeof(Interval))));
	SPI_finish();
}

/* _status(): the row behind the entity_cache.status view. */
Datum
entity_cache_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	StatusRow	row;
	const char *why;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(row.nulls, true, sizeof(row.nulls));
	set_col(&row, COL_DATABASE, CStringGetTextDatum(ec_database));

	if (!ec_database_served(&why))
	{
		/* the worker of another database is none of this one's business */
		set_col(&row, COL_WORKER_NOTE, CStringGetTextDatum(why));
		set_col(&row, COL_REDIS_CONNECTED, BoolGetDatum(false));
	}
	else
		status_worker(&row);
	status_queue(&row);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, row.values, row.nulls)));
}
