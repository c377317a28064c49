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

/*
 * A copy of EcShared's scalars, taken in one piece under its spinlock: they
 * are everything before text_changecount (the strings after it are read
 * through that count, ec_shared_get_text).
 */
static void
read_scalars(EcShared *s)
{
	SpinLockAcquire(&ec_shared->mutex);
	memcpy(s, ec_shared, offsetof(EcShared, text_changecount));
	SpinLockRelease(&ec_shared->mutex);
}

/* The worker's columns, for the database it serves. */
static void
status_worker(StatusRow *row)
{
	EcShared	s;
	char		text[Max(EC_LAST_ERROR_LEN, EC_REDIS_NODE_LEN)];

	read_scalars(&s);
	if (s.worker_pid != 0)
		set_col(row, COL_WORKER_PID, Int32GetDatum(s.worker_pid));
	else
		set_col(row, COL_WORKER_NOTE,
				CStringGetTextDatum("the worker is not running; the postmaster starts it again within a second"));
	set_col(row, COL_REDIS_CONNECTED, BoolGetDatum(s.worker_pid != 0 && s.redis_connected));
	set_col(row, COL_APPLIED_TOTAL, Int64GetDatum((int64) s.applied_total));
	set_col(row, COL_ERRORS_TOTAL, Int64GetDatum((int64) s.errors_total));
	set_col(row, COL_NOTIFY_SKIPPED, Int64GetDatum((int64) s.notify_skipped));
	set_col(row, COL_REFRESH_FAILED, Int64GetDatum((int64) s.refresh_failed));
	set_col(row, COL_REDELETE_PENDING, Int64GetDatum((int64) s.redelete_pending));
	if (s.last_error_at != 0)
	{
		ec_shared_get_text(text, ec_shared->last_error, EC_LAST_ERROR_LEN);
		set_col(row, COL_LAST_ERROR, CStringGetTextDatum(text));
		set_col(row, COL_LAST_ERROR_AT, TimestampTzGetDatum(s.last_error_at));
	}
	/* the node and TLS of the current connection; NULL while none */
	ec_shared_get_text(text, ec_shared->redis_node, EC_REDIS_NODE_LEN);
	if (s.worker_pid != 0 && s.redis_connected && text[0])
	{
		set_col(row, COL_REDIS_NODE, CStringGetTextDatum(text));
		set_col(row, COL_REDIS_TLS, BoolGetDatum(s.redis_tls));
	}
	/* NULL unless the worker serves a Redis Cluster (worker/cluster.c) */
	if (s.worker_pid != 0 && s.cluster_nodes > 0)
	{
		set_col(row, COL_CLUSTER_NODES, Int32GetDatum(s.cluster_nodes));
		set_col(row, COL_CLUSTER_SLOTS_LOADED_AT, TimestampTzGetDatum(s.cluster_slots_loaded_at));
		set_col(row, COL_CLUSTER_REDIRECTIONS, Int64GetDatum((int64) s.cluster_redirections));
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
