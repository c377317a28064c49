/*-------------------------------------------------------------------------
 *
 * consistency.c
 *	  warm() and verify(): queue every row of a watched table for writing,
 *	  and compare what its rows render with what Redis holds.
 *
 * Both read the table through SPI with each template's value function (see
 * EcWatched in keys.h).  verify() reads in batches of a few blocks of each
 * leaf relation (ctid ranges: keyset pagination that needs no index), each
 * with a snapshot of its own, GETs the batch's keys from Redis over its own
 * connection in one pipelined round trip, and queues repairs only at the
 * end, so it holds no transaction id while it runs.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "keys.h"

#include "access/table.h"
#include "catalog/pg_inherits.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "redis_client.h"

PG_FUNCTION_INFO_V1(entity_cache_warm);
PG_FUNCTION_INFO_V1(entity_cache_verify);

/* verify() aims at about this many rows per batch */
#define VERIFY_BATCH_ROWS 1000
#define VERIFY_MAX_BLOCKS 4096

/* The relation's templates, or an error that says it is not watched. */
static List *
watched_or_error(Relation rel)
{
	List	   *wts = ec_watched_templates(rel);

	if (wts == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not watched", RelationGetRelationName(rel)),
				 errhint("Run SELECT entity_cache.watch('%s');",
						 RelationGetRelationName(rel))));
	return wts;
}

static char *
qualified_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/*
 * warm(tbl regclass) returns bigint: queue every row of the table once per
 * template with op 'w' (SET from the row, value function and ttl, in
 * either mode); returns the number of rows.
 */
Datum
entity_cache_warm(PG_FUNCTION_ARGS)
{
	Relation	rel;
	List	   *wts;
	int			nt;
	EcBoundTemplate *bts;
	EcQueueWriter *w;
	Portal		cursor;
	StringInfoData key;
	int64		nrows = 0;
	int			nest = 0;
	MemoryContext rowcxt;
	EcRowValues rv;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("entity_cache.warm() needs a table")));
	ec_require_read_write("entity_cache.warm()");
	rel = table_open(PG_GETARG_OID(0), AccessShareLock);
	wts = watched_or_error(rel);
	nt = list_length(wts);
	bts = palloc(sizeof(EcBoundTemplate) * nt);
	initStringInfo(&key);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "entity_cache warm row",
								   ALLOCSET_SMALL_SIZES);

	SPI_connect();
	cursor = SPI_cursor_open_with_args(NULL, psprintf("SELECT * FROM %s", qualified_name(rel)),
									   0, NULL, NULL, NULL, true, 0);
	w = ec_queue_open();
	for (;;)
	{
		SPI_cursor_fetch(cursor, true, 1000);
		if (SPI_processed == 0)
			break;
		if (nrows == 0)
		{
			for (int t = 0; t < nt; t++)
				ec_bind_template(&bts[t], ((EcWatched *) list_nth(wts, t))->template,
								 SPI_tuptable->tupdesc);
			/* the keys the capture trigger would render, whatever our settings */
			nest = ec_render_begin(bts, nt);
			ec_row_values_init(&rv, SPI_tuptable->tupdesc);
		}
		/* every fetch has a descriptor of its own, of the same columns */
		rv.desc = SPI_tuptable->tupdesc;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			rv.tuple = SPI_tuptable->vals[i];
			for (int t = 0; t < nt; t++)
			{
				Datum		vals;

				if (bts[t].complete &&
					ec_render_key(&bts[t], ec_row_value, &rv, &key, &vals))
					ec_queue_add(w, EC_OP_WRITE, key.data, RelationGetRelid(rel),
								 ((EcWatched *) list_nth(wts, t))->arg, vals, false);
			}
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
			nrows++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	ec_canonical_end(nest);
	ec_queue_close(w);
	SPI_cursor_close(cursor);
	SPI_finish();
	table_close(rel, AccessShareLock);
	PG_RETURN_INT64(nrows);
}

/* ---------------------------------------------------------------------- */

typedef struct Problem
{
	char	   *key;
	bool		orphan;
	Datum		vals;			/* stale: what finds the row again */
	const char *arg;
} Problem;

typedef struct Verify
{
	Relation	rel;
	List	   *wts;			/* EcWatched */
	int			nt;
	char	  **valexprs;		/* per template */
	HTAB	   *seen;			/* every key a row rendered, for orphans */
	List	   *problems;		/* Problem */
	Tuplestorestate *out;
	TupleDesc	outdesc;
	/* the batch */
	int			nkeys;
	char	  **keys;
	size_t	   *keylens;
	char	  **expected;
	Datum	   *vals;
	int		   *tmpl;
} Verify;

static void
report(Verify *v, const char *key, bool orphan, Datum vals, const char *arg)
{
	Datum		values[2];
	bool		nulls[2] = {false, false};
	Problem    *p = palloc(sizeof(Problem));

	values[0] = CStringGetTextDatum(key);
	values[1] = CStringGetTextDatum(orphan ? "orphan" : "stale");
	tuplestore_putvalues(v->out, v->outdesc, values, nulls);
	p->key = pstrdup(key);
	p->orphan = orphan;
	p->vals = vals ? PointerGetDatum(DatumGetArrayTypePCopy(vals)) : (Datum) 0;
	p->arg = arg;
	v->problems = lappend(v->problems, p);
}

static void
remember_key(Verify *v, const char *key)
{
	char	   *k = pstrdup(key);

	(void) hash_search(v->seen, &k, HASH_ENTER, NULL);
}

/* GET the batch's keys and report those whose value differs. */
static void
compare_batch(Verify *v, MemoryContext keep)
{
	char	  **got = palloc(sizeof(char *) * v->nkeys);
	size_t	   *gotlen = palloc(sizeof(size_t) * v->nkeys);
	StringInfoData err;

	if (v->nkeys == 0)
		return;
	initStringInfo(&err);
	if (!ec_redis_get_many(v->nkeys, (const char *const *) v->keys, v->keylens,
						   got, gotlen, &err))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("entity_cache.verify(): %s", err.data)));
	for (int i = 0; i < v->nkeys; i++)
	{
		const char *want = v->expected[i];

		/* absent is fine: readers fill on demand */
		if (got[i] == NULL)
			continue;
		if (want != NULL && strlen(want) == gotlen[i] &&
			memcmp(want, got[i], gotlen[i]) == 0)
			continue;
		{
			MemoryContext old = MemoryContextSwitchTo(keep);

			report(v, v->keys[i], false, v->vals[i],
				   ((EcWatched *) list_nth(v->wts, v->tmpl[i]))->arg);
			MemoryContextSwitchTo(old);
		}
	}
}

/*
 * Render the keys and expected values of one batch of rows (SPI's result:
 * the table's columns, then one value per template) and compare them.
 */
static void
verify_rows(Verify *v, EcBoundTemplate *bts, EcRowValues *row, MemoryContext keep)
{
	TupleDesc	desc = SPI_tuptable->tupdesc;
	int			nvalcol = desc->natts - v->nt;
	int			cap = (int) SPI_processed * v->nt;
	StringInfoData key;

	v->nkeys = 0;
	v->keys = palloc(sizeof(char *) * Max(cap, 1));
	v->keylens = palloc(sizeof(size_t) * Max(cap, 1));
	v->expected = palloc(sizeof(char *) * Max(cap, 1));
	v->vals = palloc(sizeof(Datum) * Max(cap, 1));
	v->tmpl = palloc(sizeof(int) * Max(cap, 1));
	initStringInfo(&key);
	row->desc = desc;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		row->tuple = SPI_tuptable->vals[i];
		for (int t = 0; t < v->nt; t++)
		{
			Datum		vals;
			MemoryContext old;

			if (!bts[t].complete ||
				!ec_render_key(&bts[t], ec_row_value, row, &key, &vals))
				continue;
			old = MemoryContextSwitchTo(keep);
			remember_key(v, key.data);
			MemoryContextSwitchTo(old);
			v->keys[v->nkeys] = pstrdup(key.data);
			v->keylens[v->nkeys] = key.len;
			v->expected[v->nkeys] = (char *) ec_row_value(row, nvalcol + t + 1);
			v->vals[v->nkeys] = vals;
			v->tmpl[v->nkeys] = t;
			v->nkeys++;
		}
	}
	compare_batch(v, keep);
}

/*
 * Verify one leaf relation, a few blocks at a time.  Each SPI_execute()
 * that is not read-only takes a new snapshot (in READ COMMITTED), so each
 * batch compares Redis with the rows as they are now, not as they were
 * when the call started.
 */
static void
verify_leaf(Verify *v, Oid leaf, MemoryContext keep)
{
	Relation	lrel = table_open(leaf, AccessShareLock);
	char	   *name = qualified_name(lrel);
	StringInfoData cols;
	BlockNumber start = 0;
	BlockNumber step = 8;
	bool		bound = false;
	EcBoundTemplate *bts = palloc(sizeof(EcBoundTemplate) * v->nt);
	EcRowValues row;
	MemoryContext batchcxt = AllocSetContextCreate(CurrentMemoryContext,
												   "entity_cache verify batch",
												   ALLOCSET_DEFAULT_SIZES);

	initStringInfo(&cols);
	for (int t = 0; t < v->nt; t++)
		appendStringInfo(&cols, ", %s", v->valexprs[t]);
	/* bound against the table's columns as t.* returns them (no dropped ones) */
	while (start < RelationGetNumberOfBlocks(lrel))
	{
		MemoryContext old = MemoryContextSwitchTo(batchcxt);
		char	   *sql = psprintf("SELECT t.*%s FROM ONLY %s t "
								   "WHERE t.ctid >= '(%u,0)'::pg_catalog.tid "
								   "AND t.ctid < '(%u,0)'::pg_catalog.tid",
								   cols.data, name, start, start + step);

		CHECK_FOR_INTERRUPTS();
		if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "verify query failed: %s", sql);
		/* SPI returns in its procedure context, which lives until the end */
		MemoryContextSwitchTo(batchcxt);
		if (!bound)
		{
			/* every batch has the same columns: bind once, for the leaf */
			MemoryContextSwitchTo(old);
			for (int t = 0; t < v->nt; t++)
				ec_bind_template(&bts[t], ((EcWatched *) list_nth(v->wts, t))->template,
								 SPI_tuptable->tupdesc);
			ec_row_values_init(&row, SPI_tuptable->tupdesc);
			MemoryContextSwitchTo(batchcxt);
			bound = true;
		}
		verify_rows(v, bts, &row, keep);
		start += step;
		/* aim at VERIFY_BATCH_ROWS rows per batch */
		if (SPI_processed < VERIFY_BATCH_ROWS / 2 && step < VERIFY_MAX_BLOCKS)
			step *= 2;
		else if (SPI_processed > VERIFY_BATCH_ROWS * 2 && step > 1)
			step /= 2;
		SPI_freetuptable(SPI_tuptable);
		MemoryContextSwitchTo(old);
		MemoryContextReset(batchcxt);
	}
	MemoryContextDelete(batchcxt);
	table_close(lrel, AccessShareLock);
}

typedef struct ScanArg
{
	Verify	   *v;
	HTAB	   *reported;
	MemoryContext keep;
} ScanArg;

static void
orphan_candidate(void *arg, const char *key, size_t len)
{
	ScanArg    *sa = arg;
	char	   *k = pnstrdup(key, len);
	bool		found;

	if (strlen(k) != len || hash_search(sa->v->seen, &k, HASH_FIND, NULL) != NULL)
		return;
	/* SCAN may return a key twice */
	(void) hash_search(sa->reported, &k, HASH_ENTER, &found);
	if (!found)
	{
		MemoryContext old = MemoryContextSwitchTo(sa->keep);

		report(sa->v, k, true, (Datum) 0, NULL);
		MemoryContextSwitchTo(old);
	}
}

static HTAB *
string_set(const char *name)
{
	return ec_cstring_hash_create(name, 1024, sizeof(char *), CurrentMemoryContext);
}

/*
 * Keys that match a template's pattern but that no row rendered: keys of
 * deleted rows.  Costs a SCAN over the whole keyspace per template.
 */
static void
find_orphans(Verify *v, MemoryContext keep)
{
	ScanArg		sa = {v, string_set("entity_cache verify orphans"), keep};

	for (int t = 0; t < v->nt; t++)
	{
		EcBoundTemplate bt;
		char	   *pattern;
		StringInfoData err;

		ec_bind_template(&bt, ((EcWatched *) list_nth(v->wts, t))->template,
						 RelationGetDescr(v->rel));
		pattern = ec_template_pattern(&bt);
		initStringInfo(&err);
		if (!ec_redis_scan(pattern, strlen(pattern), orphan_candidate, &sa, &err))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("entity_cache.verify(): %s", err.data)));
	}
}

/* Queue every problem found: stale keys with what finds their row again. */
static void
queue_repairs(Verify *v)
{
	EcQueueWriter *w;
	ListCell   *lc;

	if (v->problems == NIL)
		return;
	ec_require_read_write("entity_cache.verify(repair => true)");
	w = ec_queue_open();
	foreach(lc, v->problems)
	{
		Problem    *p = lfirst(lc);

		if (p->orphan)
			ec_queue_add(w, EC_OP_KEY, p->key, InvalidOid, NULL, (Datum) 0, true);
		else
			ec_queue_add(w, EC_OP_KEY, p->key, RelationGetRelid(v->rel), p->arg,
						 p->vals, false);
	}
	ec_queue_close(w);
}

static void
verify_all(Verify *v, MemoryContext keep)
{
	List	   *leaves = find_all_inheritors(RelationGetRelid(v->rel), AccessShareLock, NULL);
	ListCell   *lc;
	StringInfoData err;

	initStringInfo(&err);
	if (!ec_redis_connect(ec_redis_url, ec_redis_password, ec_redis_timeout_ms, &err))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("entity_cache.verify() could not reach Redis: %s", err.data)));
	SPI_connect();
	foreach(lc, leaves)
	{
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_RELATION)
			verify_leaf(v, lfirst_oid(lc), keep);
	}
	SPI_finish();
	find_orphans(v, keep);
}

/*
 * verify(tbl regclass, repair boolean) returns table (key text, problem
 * text): 'stale' for a key whose value differs from the value function's
 * output for its row, 'orphan' for a key of the template that no row
 * renders.  With repair, queues them (after the comparison).
 */
Datum
entity_cache_verify(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Verify		v;
	MemoryContext keep = CurrentMemoryContext;
	int			nest;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("entity_cache.verify() needs a table and repair true or false")));
	InitMaterializedSRF(fcinfo, 0);
	memset(&v, 0, sizeof(v));
	v.out = rsinfo->setResult;
	v.outdesc = rsinfo->setDesc;
	v.rel = table_open(PG_GETARG_OID(0), AccessShareLock);
	v.wts = watched_or_error(v.rel);
	v.nt = list_length(v.wts);
	v.valexprs = palloc(sizeof(char *) * v.nt);
	for (int t = 0; t < v.nt; t++)
	{
		EcWatched  *wt = list_nth(v.wts, t);

		v.valexprs[t] = ec_value_sql(wt->value, "t");
		if (v.valexprs[t] == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("value function %s of template \"%s\" does not exist",
							wt->value, wt->template),
					 errhint("Call entity_cache.watch() for the template again with an existing function.")));
	}
	v.seen = string_set("entity_cache verify keys");

	/*
	 * Keys and values as the capture trigger and the worker render them,
	 * whatever the caller's settings (an error undoes the switch).
	 */
	nest = ec_canonical_begin();
	PG_TRY();
	{
		verify_all(&v, keep);
	}
	PG_FINALLY();
	{
		ec_redis_disconnect();
	}
	PG_END_TRY();
	ec_canonical_end(nest);

	if (PG_GETARG_BOOL(1))
		queue_repairs(&v);
	table_close(v.rel, AccessShareLock);
	return (Datum) 0;
}
