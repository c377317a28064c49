/*-------------------------------------------------------------------------
 *
 * drain.c
 *	  Take up to batch_size committed queue rows, apply them to Redis in
 *	  one pipelined round trip, and remove them in the same transaction,
 *	  which commits only after Redis acknowledged every command.  If the
 *	  worker dies between the two, the rows come back and are applied
 *	  again: at-least-once, and every command here is idempotent.
 *
 * Refresh mode reads the current committed row when the batch is applied,
 * never a copy taken at change time, so a later batch can only write a
 * newer row: per-key order follows commit order.
 *
 *-------------------------------------------------------------------------
 */
#include "drain.h"

#include "entity_cache.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/vacuum.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "redis_client.h"
#include "template.h"

/* keys per UNLINK command in delete mode */
#define UNLINK_CHUNK 1000

typedef struct QueueRow
{
	int64		id;
	char		op;
	char	   *key;
	size_t		keylen;
	Oid			relid;
	char	   *template;
	Datum		vals;			/* text[], or 0 */
} QueueRow;

/* a prepared row lookup for refresh mode, per (relation, template) */
typedef struct Lookup
{
	Oid			relid;
	char	   *template;
	int			nargs;
	SPIPlanPtr	plan;
} Lookup;

static SPIPlanPtr delete_plan = NULL;
static List *lookups = NIL;		/* in TopMemoryContext */
static MemoryContext batch_cxt = NULL;

/*
 * No FOR UPDATE: only this worker deletes queue rows (worker_attach makes
 * sure there is one), and locking each row first would double the WAL.
 * Rows are matched by ctid (they are never updated), which saves a second
 * index search per row.  "id > $2" is the watermark: see ec_drain_batch.
 */
static const char *DELETE_SQL =
"DELETE FROM entity_cache.queue q "
"WHERE q.ctid = ANY (ARRAY(SELECT ctid FROM entity_cache.queue "
"                          WHERE id > $2 ORDER BY id LIMIT $1)) "
"RETURNING q.id, q.op, q.key, q.relid, q.template, q.vals";

/*
 * After a full batch, the highest id it took; 0 otherwise.  While a backlog
 * drains, each batch starts where the last one ended instead of walking the
 * index entries of every row already deleted (they stay until vacuum, and
 * walking them made a long drain quadratic).  A row whose id is below the
 * watermark but committed late is not lost: the first batch that comes back
 * short resets the watermark, and the next one starts from the beginning.
 */
static int64 watermark = 0;

static int
row_cmp(const void *a, const void *b)
{
	int64		x = ((const QueueRow *) a)->id;
	int64		y = ((const QueueRow *) b)->id;

	return x < y ? -1 : x > y;
}

static int
fetch_rows(int batch_size, bool want_lookup, QueueRow **rows_out)
{
	Datum		args[2] = {Int32GetDatum(batch_size), Int64GetDatum(watermark)};
	Oid			argtypes[2] = {INT4OID, INT8OID};
	QueueRow   *rows;
	int			n;

	if (delete_plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(DELETE_SQL, 2, argtypes);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		delete_plan = p;
	}
	if (SPI_execute_plan(delete_plan, args, NULL, false, 0) != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "could not take rows from entity_cache.queue");

	n = (int) SPI_processed;
	rows = MemoryContextAlloc(batch_cxt, sizeof(QueueRow) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		text	   *k;
		MemoryContext old;

		rows[i].id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		rows[i].op = DatumGetChar(SPI_getbinval(t, d, 2, &isnull));
		old = MemoryContextSwitchTo(batch_cxt);
		k = DatumGetTextPP(SPI_getbinval(t, d, 3, &isnull));
		rows[i].keylen = VARSIZE_ANY_EXHDR(k);
		rows[i].key = text_to_cstring(k);
		rows[i].relid = InvalidOid;
		rows[i].template = NULL;
		rows[i].vals = (Datum) 0;
		/* what finds the row again matters in refresh mode only */
		if (want_lookup)
		{
			rows[i].relid = DatumGetObjectId(SPI_getbinval(t, d, 4, &isnull));
			if (isnull)
				rows[i].relid = InvalidOid;
			rows[i].template = SPI_getvalue(t, d, 5);
			rows[i].vals = SPI_getbinval(t, d, 6, &isnull);
			rows[i].vals = isnull ? (Datum) 0 :
				PointerGetDatum(DatumGetArrayTypePCopy(rows[i].vals));
		}
		MemoryContextSwitchTo(old);
	}
	qsort(rows, n, sizeof(QueueRow), row_cmp);
	*rows_out = rows;
	return n;
}

/* Build (once) the plan that reads the row a key was rendered from. */
static Lookup *
get_lookup(Oid relid, const char *template)
{
	ListCell   *lc;
	Lookup	   *l;
	EcTemplate	t;
	size_t		errpos;
	StringInfoData sql;
	Oid			argtypes[EC_TEMPLATE_MAX_PARTS];
	char	   *relname;
	MemoryContext old;
	int			nargs = 0;

	foreach(lc, lookups)
	{
		l = lfirst(lc);
		if (l->relid == relid && strcmp(l->template, template) == 0)
			return l;
	}

	relname = get_rel_name(relid);
	if (relname == NULL ||
		ec_template_parse(template, strlen(template), &t, &errpos) != NULL ||
		t.ncolumns == 0)
		return NULL;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT pg_catalog.row_to_json(t)::text FROM %s t WHERE ",
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												relname));
	for (int i = 0; i < t.nparts; i++)
	{
		char	   *col;
		AttrNumber	attnum;

		if (!t.parts[i].is_column)
			continue;
		col = pnstrdup(template + t.parts[i].offset, t.parts[i].len);
		attnum = get_attnum(relid, col);
		if (attnum == InvalidAttrNumber)
			return NULL;
		argtypes[nargs] = TEXTOID;
		nargs++;
		/* compare in the column's type, so its index can be used */
		appendStringInfo(&sql, "%st.%s = CAST($%d AS %s)",
						 nargs > 1 ? " AND " : "",
						 quote_identifier(col), nargs,
						 format_type_be_qualified(get_atttype(relid, attnum)));
	}
	appendStringInfoString(&sql, " LIMIT 2");

	old = MemoryContextSwitchTo(TopMemoryContext);
	l = palloc0(sizeof(Lookup));
	l->relid = relid;
	l->template = pstrdup(template);
	l->nargs = nargs;
	MemoryContextSwitchTo(old);

	l->plan = SPI_prepare(sql.data, nargs, argtypes);
	if (l->plan == NULL)
		elog(ERROR, "could not prepare refresh lookup \"%s\": %s",
			 sql.data, SPI_result_code_string(SPI_result));
	SPI_keepplan(l->plan);
	old = MemoryContextSwitchTo(TopMemoryContext);
	lookups = lappend(lookups, l);
	MemoryContextSwitchTo(old);
	return l;
}

/*
 * The JSON of the one current row behind r, or NULL if there is none (or
 * more than one: the key is then ambiguous and deleting it is the only
 * safe answer).
 */
static char *
lookup_json(QueueRow *r)
{
	Lookup	   *l;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	char	   *json = NULL;

	if (!OidIsValid(r->relid) || r->template == NULL || r->vals == 0)
		return NULL;
	l = get_lookup(r->relid, r->template);
	if (l == NULL)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(r->vals), TEXTOID, -1, false,
					  TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems != l->nargs)
		return NULL;
	if (SPI_execute_plan(l->plan, elems, NULL, true, 2) != SPI_OK_SELECT)
		return NULL;
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			json = MemoryContextStrdup(batch_cxt, v);
	}
	SPI_freetuptable(SPI_tuptable);
	return json;
}

/*
 * Fill jsons[i] for every row that refresh mode should SET.  Run inside a
 * subtransaction: a lookup that fails (a dropped table, a column whose
 * type lost its equality operator) must cost a DEL, not the batch.
 */
static void
lookup_all(QueueRow *rows, int n, char **jsons)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
			if (rows[i].op == EC_OP_KEY && rows[i].key != NULL)
				jsons[i] = lookup_json(&rows[i]);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		ereport(WARNING,
				(errmsg("entity_cache: refresh lookup failed, deleting the batch's keys instead: %s",
						edata->message)));
		FreeErrorData(edata);
		for (int i = 0; i < n; i++)
			jsons[i] = NULL;
		/* plans may refer to what is gone; build them again next time */
		lookups = NIL;
	}
	PG_END_TRY();
}

/*
 * Drop rows whose key a later row of the batch repeats; flush rows are
 * kept (each pattern is flushed once anyway, and there are few).
 */
static void
collapse_duplicates(QueueRow *rows, int n)
{
	HASHCTL		ctl;
	HTAB	   *seen;

	ctl.keysize = sizeof(uint32);
	ctl.entrysize = sizeof(uint32) + sizeof(int);
	ctl.hcxt = batch_cxt;
	seen = hash_create("entity_cache batch keys", n, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	/* walk backwards so the last row of each key survives */
	for (int i = n - 1; i >= 0; i--)
	{
		uint32		h;
		bool		found;
		struct
		{
			uint32		h;
			int			idx;
		}		   *e;

		if (rows[i].op != EC_OP_KEY)
			continue;
		h = hash_bytes((const unsigned char *) rows[i].key, rows[i].keylen);
		e = hash_search(seen, &h, HASH_ENTER, &found);
		if (!found)
		{
			e->idx = i;
			continue;
		}
		/* a hash collision between different keys keeps both */
		if (rows[e->idx].keylen == rows[i].keylen &&
			memcmp(rows[e->idx].key, rows[i].key, rows[i].keylen) == 0)
		{
			/* keep the lookup data if only the earlier row had it */
			if (rows[e->idx].vals == 0 && rows[i].vals != 0)
			{
				rows[e->idx].relid = rows[i].relid;
				rows[e->idx].template = rows[i].template;
				rows[e->idx].vals = rows[i].vals;
			}
			rows[i].key = NULL;
		}
	}
}

static bool
apply_rows(QueueRow *rows, int n, StringInfo err)
{
	bool		refresh = (ec_mode == EC_MODE_REFRESH);
	char	  **jsons = MemoryContextAllocZero(batch_cxt, sizeof(char *) * n);
	const char **argv = MemoryContextAlloc(batch_cxt, sizeof(char *) * (UNLINK_CHUNK + 1));
	size_t	   *argvlen = MemoryContextAlloc(batch_cxt, sizeof(size_t) * (UNLINK_CHUNK + 1));
	int			nargs = 0;
	char		ttl[16];
	uint64		flushed = 0;

	snprintf(ttl, sizeof(ttl), "%d", ec_ttl);
	collapse_duplicates(rows, n);
	if (refresh)
		lookup_all(rows, n, jsons);

	/* flushes first: a TRUNCATE then INSERT in one batch must end cached */
	for (int i = 0; i < n; i++)
		if (rows[i].op == EC_OP_FLUSH &&
			!ec_redis_flush_pattern(rows[i].key, rows[i].keylen, &flushed, err))
			return false;

	argv[0] = "UNLINK";
	argvlen[0] = 6;
	for (int i = 0; i < n; i++)
	{
		if (rows[i].op != EC_OP_KEY || rows[i].key == NULL)
			continue;
		if (jsons[i])
		{
			const char *sargv[5] = {"SET", rows[i].key, jsons[i], "EX", ttl};
			size_t		sargvlen[5] = {3, rows[i].keylen, strlen(jsons[i]), 2, strlen(ttl)};

			ec_redis_append(5, sargv, sargvlen);
			continue;
		}
		argv[nargs + 1] = rows[i].key;
		argvlen[nargs + 1] = rows[i].keylen;
		if (++nargs == UNLINK_CHUNK)
		{
			ec_redis_append(nargs + 1, argv, argvlen);
			nargs = 0;
		}
	}
	if (nargs > 0)
		ec_redis_append(nargs + 1, argv, argvlen);

	return ec_redis_read_replies(err);
}

/*
 * Rows removed since the queue was last vacuumed.  Every batch that starts
 * from the beginning walks the index entries of rows removed since the
 * last vacuum, and autovacuum visits a database only once a minute: at ten
 * thousand keys a second that walk is most of the worker's time.  So the
 * worker vacuums its own queue every so often.
 */
#define VACUUM_EVERY_ROWS 20000
static uint64 removed_since_vacuum = 0;

static void
vacuum_queue(void)
{
	VacuumStmt *stmt = makeNode(VacuumStmt);
	ParseState *pstate;
	Oid			relid;

	StartTransactionCommand();

	/*
	 * If autovacuum holds the queue it is doing the job already.  Ask first:
	 * VACUUM (SKIP_LOCKED) would skip too, but with a WARNING in the log.
	 */
	relid = ec_queue_relid(true);
	if (!OidIsValid(relid) || !ConditionalLockRelationOid(relid, ShareUpdateExclusiveLock))
	{
		CommitTransactionCommand();
		return;
	}
	UnlockRelationOid(relid, ShareUpdateExclusiveLock);

	pstate = make_parsestate(NULL);
	stmt->is_vacuumcmd = true;
	/* never wait behind autovacuum: if it holds the queue, it does the job */
	stmt->options = list_make1(makeDefElem("skip_locked", NULL, -1));
	stmt->rels = list_make1(makeVacuumRelation(makeRangeVar(EC_SCHEMA, EC_QUEUE, -1),
											   InvalidOid, NIL));
	pgstat_report_activity(STATE_RUNNING, "VACUUM entity_cache.queue");
	ExecVacuum(pstate, stmt, true);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	removed_since_vacuum = 0;
}

/*
 * Apply one batch.  *drained_as_of is set (else left alone) when the batch
 * took every row visible to a snapshot taken after that time: everything
 * committed before it is now in Redis, which is what sync() waits for.
 */
EcDrainResult
ec_drain_batch(int batch_size, uint64 *napplied, TimestampTz *drained_as_of,
			   StringInfo err)
{
	QueueRow   *rows;
	int			n;
	bool		ok;
	bool		from_start = (watermark == 0);
	TimestampTz started;

	*napplied = 0;
	if (batch_cxt == NULL)
		batch_cxt = AllocSetContextCreate(TopMemoryContext, "entity_cache batch",
										  ALLOCSET_DEFAULT_SIZES);

	/* before the snapshot: it sees every commit that finished by then */
	started = GetCurrentTimestamp();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());

	if (!OidIsValid(ec_queue_relid(true)))
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		return EC_DRAIN_NOT_INSTALLED;
	}

	pgstat_report_activity(STATE_RUNNING, "applying entity_cache.queue");
	n = fetch_rows(batch_size, ec_mode == EC_MODE_REFRESH, &rows);
	ok = (n == 0) || apply_rows(rows, n, err);

	if (ok && n == batch_size)
		watermark = rows[n - 1].id;
	else
		watermark = 0;

	SPI_finish();
	PopActiveSnapshot();
	if (ok)
		CommitTransactionCommand();
	else
		AbortCurrentTransaction();
	/* autovacuum learns of the dead rows only through the statistics */
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextReset(batch_cxt);

	if (!ok)
		return EC_DRAIN_REDIS_ERROR;
	*napplied = n;
	if (from_start && n < batch_size)
		*drained_as_of = started;

	/* not in the middle of a backlog: there the watermark skips the dead */
	removed_since_vacuum += n;
	if (removed_since_vacuum >= VACUUM_EVERY_ROWS && n < batch_size)
		vacuum_queue();
	return EC_DRAIN_OK;
}
