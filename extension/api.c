/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL-callable functions: template checks for watch(), invalidate(),
 *	  invalidate_key(), flush_all(), sync() and the status view.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "keys.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "nodes/makefuncs.h"

PG_FUNCTION_INFO_V1(entity_cache_check_template);
PG_FUNCTION_INFO_V1(entity_cache_trigger_args);
PG_FUNCTION_INFO_V1(entity_cache_watch_arg);
PG_FUNCTION_INFO_V1(entity_cache_watched_args);
PG_FUNCTION_INFO_V1(entity_cache_invalidate);
PG_FUNCTION_INFO_V1(entity_cache_invalidate_key);
PG_FUNCTION_INFO_V1(entity_cache_flush_all);
PG_FUNCTION_INFO_V1(entity_cache_sync);

#define ENTITY_TABLE "app.entity"

void
ec_require_read_write(const char *what)
{
	PreventCommandIfReadOnly(what);
	PreventCommandDuringRecovery(what);
}

/*
 * _check_template(tbl regclass, key_template text): raise an error that
 * names what is wrong with the template for this table.
 */
Datum
entity_cache_check_template(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *tmpl = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Relation	rel = table_open(relid, AccessShareLock);
	EcBoundTemplate bt;

	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errdetail("entity_cache watches ordinary and partitioned tables only.")));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot watch temporary table \"%s\"", RelationGetRelationName(rel)),
				 errdetail("The worker cannot read another session's temporary table, and its rows vanish with the session."),
				 errhint("Invalidate the keys of session-private data with entity_cache.invalidate_key().")));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_UNLOGGED)
		ereport(WARNING,
				(errmsg("table \"%s\" is unlogged: after a crash its rows are gone but their keys stay cached",
						RelationGetRelationName(rel)),
				 errhint("After a crash, run SELECT entity_cache.flush_all();")));

	ec_bind_template(&bt, tmpl, RelationGetDescr(rel));
	if (!bt.complete)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("key template \"%s\" names column \"%s\", which table \"%s\" does not have",
						tmpl, bt.missing, RelationGetRelationName(rel)),
				 errhint("Placeholders are column names exactly as stored (case-sensitive, unquoted).")));
	if (strchr(tmpl, '\n') || strchr(tmpl, '\r'))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid key template \"%s\": it contains a line break", tmpl)));

	table_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}

/*
 * _trigger_args(tgargs bytea, tgnargs int2) returns text[]: pg_trigger keeps
 * the arguments NUL-separated, which SQL cannot split.
 */
Datum
entity_cache_trigger_args(PG_FUNCTION_ARGS)
{
	bytea	   *args = PG_GETARG_BYTEA_PP(0);
	int			nargs = PG_GETARG_INT16(1);
	const char *p = VARDATA_ANY(args);
	const char *end = p + VARSIZE_ANY_EXHDR(args);
	Datum	   *elems = palloc(sizeof(Datum) * Max(nargs, 1));
	int			n = 0;

	while (n < nargs && p < end)
	{
		size_t		len = strnlen(p, end - p);

		elems[n++] = PointerGetDatum(cstring_to_text_with_len(p, len));
		p += len + 1;
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * _watch_arg(tbl regclass, key_template text, value regprocedure) returns
 * text: check the template (as _check_template does) and the value
 * function, and return the capture trigger argument that carries both
 * (see EcWatched in keys.h).  The one place that writes the encoding;
 * ec_split_watch_arg() is the one that reads it.
 */
Datum
entity_cache_watch_arg(PG_FUNCTION_ARGS)
{
	Oid			relid;
	text	   *tmpl;
	char	   *sig;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("entity_cache.watch() needs a table and a key template")));
	relid = PG_GETARG_OID(0);
	tmpl = PG_GETARG_TEXT_PP(1);
	DirectFunctionCall2(entity_cache_check_template, ObjectIdGetDatum(relid),
						PointerGetDatum(tmpl));
	if (PG_ARGISNULL(2))
		PG_RETURN_TEXT_P(tmpl);
	sig = ec_check_value_fn(relid, PG_GETARG_OID(2));
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("%s%s%s", text_to_cstring(tmpl),
											  EC_VALUE_PREFIX, sig)));
}

/*
 * _watched_args(tgname name, tgfoid oid, tgargs bytea, tgnargs int2)
 * returns setof (key_template text, value text, arg text): the templates a trigger
 * carries if it is a capture insert trigger, none otherwise.  Behind the
 * entity_cache.watched view; the C side reads the same through
 * ec_watched_templates().
 */
Datum
entity_cache_watched_args(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		args;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *enulls;
	int			nelems;

	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3) ||
		!ec_is_capture_trigger(NameStr(*PG_GETARG_NAME(0)), PG_GETARG_OID(1)))
		return (Datum) 0;
	args = DirectFunctionCall2(entity_cache_trigger_args, PG_GETARG_DATUM(2),
							   PG_GETARG_DATUM(3));
	arr = DatumGetArrayTypeP(args);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &nelems);
	for (int i = 0; i < nelems; i++)
	{
		EcWatched  *w = ec_split_watch_arg(TextDatumGetCString(elems[i]));
		Datum		values[3];
		bool		nulls[3] = {false, w->value == NULL, false};

		values[0] = CStringGetTextDatum(w->template);
		values[1] = w->value ? CStringGetTextDatum(w->value) : (Datum) 0;
		values[2] = CStringGetTextDatum(w->arg);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

typedef struct CodeOnly
{
	AttrNumber	code_attnum;
	const char *code;
} CodeOnly;

static const char *
code_only_value(void *arg, AttrNumber attnum)
{
	CodeOnly   *c = arg;

	return attnum == c->code_attnum ? c->code : NULL;
}

/*
 * Queue the key of every row SPI_tuptable holds; returns how many were
 * queued.  Rendered under the same settings as the capture trigger's
 * (keys.c), so that invalidate() names the keys the trigger would.
 */
static int
queue_spi_rows(EcQueueWriter *w, EcBoundTemplate *bt, Oid relid,
			   const char *watch_arg, StringInfo key)
{
	int			nest = ec_render_begin(bt, 1);
	int			n = 0;
	EcRowValues rv;

	ec_row_values_init(&rv, SPI_tuptable->tupdesc);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		vals;

		rv.tuple = SPI_tuptable->vals[i];
		if (ec_render_key(bt, ec_row_value, &rv, key, &vals))
		{
			ec_queue_add(w, EC_OP_KEY, key->data, relid, watch_arg, vals, false);
			n++;
		}
	}
	ec_canonical_end(nest);
	return n;
}

/*
 * invalidate(code text) returns integer: queue every key of the app.entity
 * row with that code.  With no such row (already deleted, say) the
 * templates that need nothing but the code are still rendered from it.
 */
Datum
entity_cache_invalidate(PG_FUNCTION_ARGS)
{
	char	   *code;
	RangeVar   *rv;
	Oid			relid;
	Relation	rel;
	List	   *templates;
	ListCell   *lc;
	EcQueueWriter *w;
	StringInfoData key;
	int			nkeys = 0;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	AttrNumber	code_attnum;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("code must not be NULL")));
	code = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ec_require_read_write("entity_cache.invalidate()");

	rv = makeRangeVar("app", "entity", -1);
	relid = RangeVarGetRelid(rv, AccessShareLock, true);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s does not exist", ENTITY_TABLE),
				 errhint("Use entity_cache.invalidate_key() for keys of other tables.")));
	rel = table_open(relid, NoLock);
	templates = ec_watched_templates(rel);
	if (templates == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not watched", ENTITY_TABLE),
				 errhint("Run SELECT entity_cache.watch('%s');", ENTITY_TABLE)));
	code_attnum = get_attnum(relid, "code");
	if (code_attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("table %s has no column \"code\"", ENTITY_TABLE)));

	initStringInfo(&key);
	w = ec_queue_open();

	SPI_connect();
	args[0] = CStringGetTextDatum(code);
	SPI_execute_with_args(psprintf("SELECT * FROM %s WHERE code = $1",
								   quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
															  RelationGetRelationName(rel))),
						  1, argtypes, args, NULL, true, 0);

	foreach(lc, templates)
	{
		EcWatched  *wt = lfirst(lc);
		EcBoundTemplate bt;
		Datum		vals;

		/*
		 * Rows are read by position in SPI's descriptor, which has no
		 * dropped columns; the code alone is read by the table's.
		 */
		ec_bind_template(&bt, wt->template,
						 SPI_processed == 0 ? RelationGetDescr(rel) : SPI_tuptable->tupdesc);
		if (!bt.complete)
			continue;
		if (SPI_processed == 0)
		{
			CodeOnly	c = {code_attnum, code};

			if (ec_render_key(&bt, code_only_value, &c, &key, &vals))
			{
				ec_queue_add(w, EC_OP_KEY, key.data, relid, wt->arg, vals, false);
				nkeys++;
			}
			continue;
		}
		nkeys += queue_spi_rows(w, &bt, relid, wt->arg, &key);
	}
	SPI_finish();

	ec_queue_close(w);
	table_close(rel, NoLock);
	PG_RETURN_INT32(nkeys);
}

/* invalidate_key(key text): queue one Redis key, whatever its shape. */
Datum
entity_cache_invalidate_key(PG_FUNCTION_ARGS)
{
	EcQueueWriter *w;
	char	   *key;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("key must not be NULL")));
	key = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (key[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key must not be empty")));
	ec_require_read_write("entity_cache.invalidate_key()");

	w = ec_queue_open();
	ec_queue_add(w, EC_OP_KEY, key, InvalidOid, NULL, (Datum) 0, true);
	ec_queue_close(w);
	PG_RETURN_VOID();
}

/*
 * flush_all() returns integer: queue a flush of every watched template's
 * pattern; returns how many patterns were queued.
 */
Datum
entity_cache_flush_all(PG_FUNCTION_ARGS)
{
	EcQueueWriter *w;
	int			n = 0;

	ec_require_read_write("entity_cache.flush_all()");

	SPI_connect();
	SPI_execute("SELECT relid::oid, key_template FROM entity_cache.watched", true, 0);
	w = ec_queue_open();
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 1, &isnull));
		char	   *tmpl = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		EcBoundTemplate bt;

		bt.text = tmpl;
		ec_template_parse_or_raise(tmpl, &bt.parsed);
		if (ec_queue_add(w, EC_OP_FLUSH, ec_template_pattern(&bt), relid, tmpl,
						 (Datum) 0, true))
			n++;
	}
	ec_queue_close(w);
	SPI_finish();
	PG_RETURN_INT32(n);
}

/*
 * Is a row queued before start still visible to a fresh snapshot?  Rows of
 * our own transaction are skipped (the worker cannot see them before we
 * commit).  A row committed before start was necessarily queued before it;
 * one queued before but committed after is waited for too, which costs at
 * most one more batch.  A fresh snapshot rather than the transaction's, so
 * that sync() also works inside REPEATABLE READ.
 */
static bool
pending_before(Relation rel, TimestampTz start)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);
	HeapTuple	tup;
	bool		found = false;

	while (!found && (tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		at;

		if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data)))
			continue;
		at = heap_getattr(tup, Anum_ec_queue_queued_at, RelationGetDescr(rel), &isnull);
		found = isnull || DatumGetTimestampTz(at) < start;
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	return found;
}

/* a longer timeout waits this long (100 years): its deadline must not overflow */
#define EC_SYNC_MAX_MS (INT64CONST(36525) * (USECS_PER_DAY / 1000))

static long
interval_ms(Interval *span)
{
	/* in double: the days and months of a long interval overflow int64 */
	double		usec = (double) span->time +
		(double) span->day * USECS_PER_DAY +
		(double) span->month * DAYS_PER_MONTH * USECS_PER_DAY;

	if (usec < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	return (long) Min(usec / 1000, (double) EC_SYNC_MAX_MS);
}

/*
 * Sleep until woken by the worker or for at most ms (and 100 ms).  Only a
 * database a worker serves waits, so the extension is preloaded.
 */
static void
sync_sleep(long ms)
{
	Assert(ec_shared != NULL);
	ConditionVariableTimedSleep(&ec_shared->applied_cv, Min(ms, 100), PG_WAIT_EXTENSION);
	CHECK_FOR_INTERRUPTS();
}

/* Is a worker running for this database? */
static bool
worker_serves_us(void)
{
	bool		ours;

	if (ec_shared == NULL)
		return false;
	SpinLockAcquire(&ec_shared->mutex);
	ours = ec_shared->worker_pid != 0 && ec_shared->worker_dboid == MyDatabaseId;
	SpinLockRelease(&ec_shared->mutex);
	return ours;
}

/*
 * sync(timeout interval) returns boolean: wait until every queue row
 * committed before the call has been applied to Redis.
 *
 * With our worker running, no table is read: the worker publishes the
 * start of its last complete pass over the queue (see drain.c), and once
 * that is later than our own start, whatever we could see has been
 * applied.  We set its latch so it checks at once instead of at its next
 * poll.  While it is not running (it is restarting) we look at the queue
 * itself.  In a database no worker serves (no preloading, or a worker
 * serving another database) we look once and return at once: true only if
 * nothing is pending.
 */
Datum
entity_cache_sync(PG_FUNCTION_ARGS)
{
	long		timeout_ms;
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz deadline;
	bool		done = false;
	Relation	rel = NULL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be NULL")));
	timeout_ms = interval_ms(PG_GETARG_INTERVAL_P(0));
	deadline = TimestampTzPlusMilliseconds(start, timeout_ms);

	/* fails clearly if the extension's objects are gone */
	(void) ec_queue_relid(false);

	/*
	 * No worker serves this database: nothing will empty the queue, so do
	 * not wait for it; the loop looks at the queue once.  True only if
	 * nothing is pending at all.
	 */
	if (!ec_database_served(NULL))
		deadline = start;
	if (worker_serves_us())
		ec_wake_worker();

	for (;;)
	{
		long		left;

		if (worker_serves_us())
		{
			TimestampTz drained;

			SpinLockAcquire(&ec_shared->mutex);
			drained = ec_shared->drained_as_of;
			SpinLockRelease(&ec_shared->mutex);
			if (drained >= start)
			{
				done = true;
				break;
			}
		}
		else
		{
			if (rel == NULL)
				rel = table_open(ec_queue_relid(false), AccessShareLock);
			if (!pending_before(rel, start))
			{
				done = true;
				break;
			}
		}
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (left <= 0)
			break;
		sync_sleep(left);
	}
	if (ec_shared)
		ConditionVariableCancelSleep();
	if (rel)
		table_close(rel, AccessShareLock);
	PG_RETURN_BOOL(done);
}
