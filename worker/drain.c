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
#include "postgres.h"

#include "drain.h"

#include "entity_cache.h"

#include "access/heapam.h"
#include "access/sysattr.h"
#include "access/tableam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/vacuum.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "cluster.h"
#include "keys.h"
#include "redelete.h"
#include "redis_client.h"
#include "template.h"

/* rows that name one key: delete (or refresh) it, or write it */
#define IS_KEY_OP(op) ((op) == EC_OP_KEY || (op) == EC_OP_WRITE)

/* keys per UNLINK command in delete mode */
#define UNLINK_CHUNK 1000

/*
 * Bytes of arguments sent in one round trip at most: a connection's output
 * buffer is a StringInfo, which cannot pass 1 GB, and a refresh batch of
 * large rows can (an "out of memory" ERROR, the same batch again after the
 * restart, forever).  A larger batch takes several round trips.
 */
#define PIPELINE_BYTES (64 * 1024 * 1024)

/*
 * A prepared row lookup for refresh mode, per (relation, template): the
 * placeholders' columns compared with typed parameters, whose values are
 * read back from the queue's text with each column's input function.  The
 * worker runs with the canonical settings the keys were rendered under
 * (keys.c), so that text reads back as the value it came from.
 */
typedef struct Lookup
{
	Oid			relid;
	char	   *template;
	int			nargs;
	SPIPlanPtr	plan;
	FmgrInfo	input[EC_TEMPLATE_MAX_PARTS];
	Oid			ioparam[EC_TEMPLATE_MAX_PARTS];
	int32		typmod[EC_TEMPLATE_MAX_PARTS];
} Lookup;

static List *lookups = NIL;		/* in TopMemoryContext */
static MemoryContext batch_cxt = NULL;

static void
ensure_batch_cxt(void)
{
	if (batch_cxt == NULL)
		batch_cxt = AllocSetContextCreate(TopMemoryContext, "entity_cache batch",
										  ALLOCSET_DEFAULT_SIZES);
}

/*
 * Where the next batch starts: just past the last row of a full batch, or
 * invalid for the beginning of the table.  While a backlog drains, each
 * batch starts where the last one ended instead of walking again over the
 * rows already deleted (they stay until pruned or vacuumed, and walking
 * them made a long drain quadratic).  A row inserted behind the watermark
 * (into space vacuum freed) is not lost: the batch that reaches the end of
 * the table resets the watermark, and the next pass starts from the
 * beginning.
 */
static ItemPointerData watermark;
static Oid	watermark_relid = InvalidOid;	/* the queue it is a TID of */

/*
 * When the pass that the watermark is part of started: once the pass
 * completes, everything committed before this is in Redis, and it becomes
 * the worker's drained_as_of (what sync() waits for).
 */
static TimestampTz pass_drained_as_of = 0;

/*
 * Read up to batch_size queue rows visible to the transaction's snapshot,
 * in physical order from the watermark on.  Nothing is deleted yet: that
 * waits until Redis has acknowledged them.  Only this worker deletes queue
 * rows (worker_attach makes sure there is one), so no row lock is taken;
 * locking each row would double the WAL.
 */
static int
fetch_rows(Relation rel, int batch_size, bool want_lookup, EcQueueRow **rows_out)
{
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	ItemPointerData mintid;
	ItemPointerData maxtid;
	TableScanDesc scan;
	EcQueueRow   *rows;
	int			n = 0;

	if (ItemPointerIsValid(&watermark))
		ItemPointerSet(&mintid, ItemPointerGetBlockNumber(&watermark),
					   ItemPointerGetOffsetNumber(&watermark) + 1);
	else
		ItemPointerSet(&mintid, 0, FirstOffsetNumber);
	ItemPointerSet(&maxtid, MaxBlockNumber, MaxOffsetNumber);

	rows = MemoryContextAlloc(batch_cxt, sizeof(EcQueueRow) * batch_size);
	scan = table_beginscan_tidrange(rel, GetActiveSnapshot(), &mintid, &maxtid);
	while (n < batch_size &&
		   table_scan_getnextslot_tidrange(scan, ForwardScanDirection, slot))
	{
		EcQueueRow   *r = &rows[n++];
		MemoryContext old = MemoryContextSwitchTo(batch_cxt);
		text	   *k;
		bool		isnull;

		slot_getallattrs(slot);
		r->tid = slot->tts_tid;
		r->relid = InvalidOid;
		r->template = NULL;
		r->vals = (Datum) 0;
		r->dup_of = -1;
		r->applied = false;
		r->xmin = DatumGetTransactionId(slot_getsysattr(slot, MinTransactionIdAttributeNumber,
														&isnull));
		if (isnull)
			r->xmin = InvalidTransactionId;
		if (slot->tts_isnull[Anum_ec_queue_op - 1] ||
			slot->tts_isnull[Anum_ec_queue_key - 1])
		{
			/* only a hand-made row can lack them; remove it, do nothing */
			ereport(WARNING,
					(errmsg("entity_cache: removing a queue row without op or key")));
			r->op = EC_OP_KEY;
			r->key = NULL;
			r->keylen = 0;
			MemoryContextSwitchTo(old);
			continue;
		}
		r->op = DatumGetChar(slot->tts_values[Anum_ec_queue_op - 1]);
		k = DatumGetTextPP(slot->tts_values[Anum_ec_queue_key - 1]);
		r->keylen = VARSIZE_ANY_EXHDR(k);
		r->key = text_to_cstring(k);
		/* what finds the row again matters in refresh mode and for writes */
		if (want_lookup || r->op == EC_OP_WRITE)
		{
			if (!slot->tts_isnull[Anum_ec_queue_relid - 1])
				r->relid = DatumGetObjectId(slot->tts_values[Anum_ec_queue_relid - 1]);
			if (!slot->tts_isnull[Anum_ec_queue_template - 1])
				r->template = TextDatumGetCString(slot->tts_values[Anum_ec_queue_template - 1]);
			if (!slot->tts_isnull[Anum_ec_queue_vals - 1])
				r->vals = PointerGetDatum(DatumGetArrayTypePCopy(slot->tts_values[Anum_ec_queue_vals - 1]));
		}
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	*rows_out = rows;
	return n;
}

/*
 * Was row i acknowledged?  A duplicate goes with the row that carried its
 * key; a row without a key (a hand-made one) has nothing to wait for.
 */
static bool
row_applied(EcQueueRow *rows, int i)
{
	if (rows[i].dup_of >= 0)
		return rows[rows[i].dup_of].applied;
	return rows[i].applied || rows[i].key == NULL;
}

/*
 * Remove the applied rows.  A row someone else deleted meanwhile (a
 * superuser emptying the queue by hand) is simply gone already.
 */
static void
delete_rows(Relation rel, EcQueueRow *rows, int n)
{
	CommandId	cid = GetCurrentCommandId(true);

	for (int i = 0; i < n; i++)
	{
		TM_FailureData tmfd;
		TM_Result	res;

		if (!row_applied(rows, i))
			continue;
		res = heap_delete(rel, &rows[i].tid, cid, InvalidSnapshot, true, &tmfd, false);
		if (res != TM_Ok && res != TM_Deleted && res != TM_Updated)
			elog(ERROR, "unexpected result %d deleting queue row (%u,%u)", (int) res,
				 ItemPointerGetBlockNumber(&rows[i].tid),
				 ItemPointerGetOffsetNumber(&rows[i].tid));
	}
}

static void
forget_lookups(void)
{
	ListCell   *lc;

	foreach(lc, lookups)
	{
		SPI_freeplan(((Lookup *) lfirst(lc))->plan);
		pfree(((Lookup *) lfirst(lc))->template);
	}
	list_free_deep(lookups);
	lookups = NIL;
}

/*
 * Build (once) the plan that reads the row a key was rendered from.  The
 * placeholders are matched to columns by ec_bind_template(), as the
 * capture trigger matched them.  Raises an error for what cannot be looked
 * up (a template that names a column no longer there, a type without an
 * equality operator); the caller turns that into a DEL of that one key.
 */
static Lookup *
get_lookup(Relation rel, const char *template)
{
	ListCell   *lc;
	Lookup	   *l;
	EcBoundTemplate bt;
	StringInfoData sql;
	Oid			argtypes[EC_TEMPLATE_MAX_PARTS];
	EcWatched  *wt;
	char	   *valexpr;
	MemoryContext old;

	foreach(lc, lookups)
	{
		l = lfirst(lc);
		if (l->relid == RelationGetRelid(rel) && strcmp(l->template, template) == 0)
			return l;
	}

	/* the queue keeps the whole trigger argument: template and value function */
	wt = ec_split_watch_arg(template);
	ec_bind_template(&bt, wt->template, RelationGetDescr(rel));
	if (!bt.complete || bt.parsed.ncolumns == 0)
		ereport(ERROR,
				(errmsg("key template \"%s\" does not name columns of table \"%s\"",
						wt->template, RelationGetRelationName(rel))));
	valexpr = ec_value_sql(wt->value, "t");
	if (valexpr == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("value function %s of key template \"%s\" no longer exists",
						wt->value, wt->template)));

	old = MemoryContextSwitchTo(TopMemoryContext);
	l = palloc0(sizeof(Lookup));
	l->relid = RelationGetRelid(rel);
	l->template = pstrdup(template);
	MemoryContextSwitchTo(old);

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s FROM %s t WHERE ", valexpr,
					 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												RelationGetRelationName(rel)));
	for (int i = 0; i < bt.parsed.nparts; i++)
	{
		Form_pg_attribute att;
		Oid			typinput;

		if (!bt.parsed.parts[i].is_column)
			continue;
		att = TupleDescAttr(RelationGetDescr(rel), bt.attnums[i] - 1);
		argtypes[l->nargs] = att->atttypid;
		getTypeInputInfo(att->atttypid, &typinput, &l->ioparam[l->nargs]);
		fmgr_info_cxt(typinput, &l->input[l->nargs], TopMemoryContext);
		l->typmod[l->nargs] = att->atttypmod;
		l->nargs++;
		/* typed parameters: the column's own equality and index */
		appendStringInfo(&sql, "%st.%s = $%d",
						 l->nargs > 1 ? " AND " : "",
						 quote_identifier(NameStr(att->attname)), l->nargs);
	}
	appendStringInfoString(&sql, " LIMIT 2");

	l->plan = SPI_prepare(sql.data, l->nargs, argtypes);
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
 * The JSON of the one current row behind r, or NULL if there is none (the
 * row was deleted: DEL is the answer), or more than one (the key is
 * ambiguous and DEL is the only safe answer), or the table is locked by
 * DDL (DROP, ALTER: waiting here, holding the queue, could deadlock with
 * it; DEL is always correct).  Raises an error for a key that cannot be
 * looked up at all: the table is gone, a value does not read back.
 */
static char *
lookup_json(EcQueueRow *r)
{
	Lookup	   *l;
	Relation	rel;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	Datum		args[EC_TEMPLATE_MAX_PARTS];
	char	   *json = NULL;

	if (!OidIsValid(r->relid) || r->template == NULL || r->vals == 0)
		return NULL;
	if (!ConditionalLockRelationOid(r->relid, AccessShareLock))
		return NULL;
	rel = try_table_open(r->relid, NoLock);
	if (rel == NULL)
		ereport(ERROR,
				(errmsg("the table of this key (OID %u) no longer exists", r->relid)));
	l = get_lookup(rel, r->template);
	table_close(rel, NoLock);

	deconstruct_array(DatumGetArrayTypeP(r->vals), TEXTOID, -1, false,
					  TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems != l->nargs)
		ereport(ERROR,
				(errmsg("the key has %d values, its template \"%s\" %d placeholders",
						nelems, r->template, l->nargs)));
	for (int i = 0; i < nelems; i++)
	{
		if (nulls[i])
			return NULL;
		args[i] = InputFunctionCall(&l->input[i], TextDatumGetCString(elems[i]),
									l->ioparam[i], l->typmod[i]);
	}
	if (SPI_execute_plan(l->plan, args, NULL, true, 2) != SPI_OK_SELECT)
		ereport(ERROR, (errmsg("the refresh lookup failed")));
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			json = MemoryContextStrdup(batch_cxt, v);
	}
	SPI_freetuptable(SPI_tuptable);
	return json;
}

/* Does refresh mode or a write need row r's JSON? */
static bool
needs_lookup(const EcQueueRow *r)
{
	return r->key != NULL &&
		(r->op == EC_OP_WRITE || (r->op == EC_OP_KEY && ec_mode == EC_MODE_REFRESH));
}

static bool
batch_needs_lookup(const EcQueueRow *rows, int n)
{
	for (int i = 0; i < n; i++)
		if (needs_lookup(&rows[i]))
			return true;
	return false;
}

/*
 * Run lookup_json() for rows [from, to) in one subtransaction.  On an
 * error, roll it back and return false with *edata set (in the caller's
 * context) and no JSON kept.
 */
static bool
lookup_range(EcQueueRow *rows, int from, int to, char **jsons, ErrorData **edata)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	bool		ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		for (int i = from; i < to; i++)
			if (needs_lookup(&rows[i]))
				jsons[i] = lookup_json(&rows[i]);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		*edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		for (int i = from; i < to; i++)
			jsons[i] = NULL;
		/* plans may refer to what is gone; build them again */
		forget_lookups();
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * Fill jsons[i] for every row that refresh mode should SET.  The whole
 * batch is tried in one subtransaction; only if that fails is each key
 * tried in its own, so a key that cannot be looked up (its table dropped,
 * a value that does not read back) is deleted on its own, with a warning
 * and a count in status.refresh_failed, and the rest are refreshed.
 */
static void
lookup_all(EcQueueRow *rows, int n, char **jsons)
{
	ErrorData  *edata = NULL;

	if (lookup_range(rows, 0, n, jsons, &edata))
		return;
	FreeErrorData(edata);
	for (int i = 0; i < n; i++)
	{
		if (!needs_lookup(&rows[i]))
			continue;
		if (lookup_range(rows, i, i + 1, jsons, &edata))
			continue;
		ereport(WARNING,
				(errmsg("entity_cache: cannot refresh key \"%s\", deleting it instead: %s",
						rows[i].key, edata->message)));
		FreeErrorData(edata);
		SpinLockAcquire(&ec_shared->mutex);
		ec_shared->refresh_failed++;
		SpinLockRelease(&ec_shared->mutex);
	}
}

/*
 * Drop rows whose key a later row of the batch repeats; flush rows are
 * kept (each pattern is flushed once anyway, and there are few).
 */
static void
collapse_duplicates(EcQueueRow *rows, int n)
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

		if (!IS_KEY_OP(rows[i].op) || rows[i].key == NULL)
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
			rows[i].dup_of = e->idx;
		}
	}
}

/*
 * ec_cluster_run() on commands of up to PIPELINE_BYTES at a time; every
 * chunk is tried (each row counts by its own command), the first error is
 * told.
 */
static bool
run_cluster_chunks(EcRoutedCmd *cmds, int ncmds, StringInfo err)
{
	StringInfoData later;
	bool		ok = true;

	initStringInfo(&later);
	for (int from = 0; from < ncmds;)
	{
		size_t		bytes = 0;
		int			to = from;

		while (to < ncmds && (to == from || bytes < PIPELINE_BYTES))
		{
			for (int a = 0; a < cmds[to].argc; a++)
				bytes += cmds[to].argvlen[a];
			to++;
		}
		if (!ec_cluster_run(cmds + from, to - from, ok ? err : &later))
			ok = false;
		from = to;
	}
	pfree(later.data);
	return ok;
}

/* order of rows by key slot, for apply_keys_cluster */
static int
cmp_slot(const void *a, const void *b)
{
	return ((const int *) a)[0] - ((const int *) b)[0];
}

/* The UNLINK of the *nargs keys after argv[0], if any, is appended. */
static void
append_unlink(const char **argv, size_t *argvlen, int *nargs)
{
	if (*nargs > 0)
		ec_redis_append(*nargs + 1, argv, argvlen);
	*nargs = 0;
}

/*
 * The keys of a batch on a Redis Cluster: an UNLINK per slot (a multi-key
 * command must stay within one slot) and a SET per refreshed key, all sent
 * at once, one pipeline per node.  Each row is marked applied only when
 * the node owning its key acknowledged its command: if a node is down,
 * the rows of the others can still go.
 */
static bool
apply_keys_cluster(EcQueueRow *rows, int n, char **jsons, const char *ttl,
				   StringInfo err)
{
	int		   *order = palloc(sizeof(int) * 2 * n);	/* (slot, row) pairs */
	int		   *cmd_of = palloc(sizeof(int) * n);
	EcRoutedCmd *cmds = palloc0(sizeof(EcRoutedCmd) * n);
	int			nkeys = 0;
	int			ncmds = 0;
	bool		ok;

	for (int i = 0; i < n; i++)
	{
		cmd_of[i] = -1;
		if (!IS_KEY_OP(rows[i].op) || rows[i].key == NULL)
			continue;
		order[2 * nkeys] = ec_cluster_key_slot(rows[i].key, rows[i].keylen);
		order[2 * nkeys + 1] = i;
		nkeys++;
	}
	qsort(order, nkeys, 2 * sizeof(int), cmp_slot);

	for (int j = 0; j < nkeys;)
	{
		int			slot = order[2 * j];
		int			i = order[2 * j + 1];
		EcRoutedCmd *c = &cmds[ncmds];
		const char **argv;
		size_t	   *argvlen;
		int			end = j;

		c->slot = slot;
		if (jsons[i])
		{
			argv = palloc(sizeof(char *) * 5);
			argvlen = palloc(sizeof(size_t) * 5);
			argv[0] = "SET", argvlen[0] = 3;
			argv[1] = rows[i].key, argvlen[1] = rows[i].keylen;
			argv[2] = jsons[i], argvlen[2] = strlen(jsons[i]);
			argv[3] = "EX", argvlen[3] = 2;
			argv[4] = ttl, argvlen[4] = strlen(ttl);
			c->argc = 5;
			cmd_of[i] = ncmds;
			j++;
		}
		else
		{
			/* the rows of this slot that are UNLINKed, up to a chunk */
			while (end < nkeys && order[2 * end] == slot && !jsons[order[2 * end + 1]] &&
				   end - j < UNLINK_CHUNK)
				end++;
			argv = palloc(sizeof(char *) * (end - j + 1));
			argvlen = palloc(sizeof(size_t) * (end - j + 1));
			argv[0] = "UNLINK", argvlen[0] = 6;
			for (int k = j; k < end; k++)
			{
				argv[k - j + 1] = rows[order[2 * k + 1]].key;
				argvlen[k - j + 1] = rows[order[2 * k + 1]].keylen;
				cmd_of[order[2 * k + 1]] = ncmds;
			}
			c->argc = end - j + 1;
			j = end;
		}
		c->argv = argv;
		c->argvlen = argvlen;
		ncmds++;
	}

	ok = run_cluster_chunks(cmds, ncmds, err);
	for (int i = 0; i < n; i++)
		if (cmd_of[i] >= 0)
			rows[i].applied = cmds[cmd_of[i]].done;
	return ok;
}

static bool
apply_rows(EcQueueRow *rows, int n, StringInfo err)
{
	char	  **jsons = MemoryContextAllocZero(batch_cxt, sizeof(char *) * n);
	const char **argv = MemoryContextAlloc(batch_cxt, sizeof(char *) * (UNLINK_CHUNK + 1));
	size_t	   *argvlen = MemoryContextAlloc(batch_cxt, sizeof(size_t) * (UNLINK_CHUNK + 1));
	int			nargs = 0;
	size_t		bytes = 0;
	char		ttl[16];

	snprintf(ttl, sizeof(ttl), "%d", ec_ttl);
	collapse_duplicates(rows, n);
	if (batch_needs_lookup(rows, n))
		lookup_all(rows, n, jsons);

	/* flushes first: a TRUNCATE then INSERT in one batch must end cached */
	for (int i = 0; i < n; i++)
	{
		if (rows[i].op != EC_OP_FLUSH || rows[i].key == NULL)
			continue;
		if (!ec_redis_flush_pattern(rows[i].key, rows[i].keylen, err))
			return false;
		rows[i].applied = true;
	}
	if (ec_cluster_active())
		return apply_keys_cluster(rows, n, jsons, ttl, err);

	argv[0] = "UNLINK";
	argvlen[0] = 6;
	for (int i = 0; i < n; i++)
	{
		if (!IS_KEY_OP(rows[i].op) || rows[i].key == NULL)
			continue;
		if (bytes >= PIPELINE_BYTES)
		{
			/* what is appended so far goes now: the buffer stays bounded */
			append_unlink(argv, argvlen, &nargs);
			bytes = 0;
			if (!ec_redis_read_replies(err))
				return false;
		}
		bytes += rows[i].keylen;
		if (jsons[i])
		{
			const char *sargv[5] = {"SET", rows[i].key, jsons[i], "EX", ttl};
			size_t		sargvlen[5] = {3, rows[i].keylen, strlen(jsons[i]), 2, strlen(ttl)};

			bytes += sargvlen[2];
			ec_redis_append(5, sargv, sargvlen);
			continue;
		}
		argv[nargs + 1] = rows[i].key;
		argvlen[nargs + 1] = rows[i].keylen;
		if (++nargs == UNLINK_CHUNK)
			append_unlink(argv, argvlen, &nargs);
	}
	append_unlink(argv, argvlen, &nargs);

	return ec_redis_read_replies(err);
}

/*
 * Rows removed since the queue was last vacuumed.  Every batch that starts
 * from the beginning walks the rows removed since the last vacuum (pruning
 * frees their space but leaves their line pointers), and autovacuum visits
 * a database only once a minute: at ten thousand keys a second that walk
 * would be most of the worker's time, and the table would only grow.  So
 * the worker vacuums its own queue every so often.
 */
#define VACUUM_EVERY_ROWS 2000
static uint64 removed_since_vacuum = 0;

static void
vacuum_queue(void)
{
	VacuumStmt *stmt;
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

	/* in the transaction: outside it, the current context is TopMemoryContext */
	stmt = makeNode(VacuumStmt);
	pstate = make_parsestate(NULL);
	stmt->is_vacuumcmd = true;
	/* never wait behind autovacuum: if it holds the queue, it does the job */
	stmt->options = list_make1(makeDefElem("skip_locked", NULL, -1));
	/*
	 * By OID, as autovacuum does: a queue dropped since the check above is
	 * then skipped silently instead of failing the worker by name.
	 */
	stmt->rels = list_make1(makeVacuumRelation(NULL, relid, NIL));
	pgstat_report_activity(STATE_RUNNING, "VACUUM entity_cache.queue");
	ExecVacuum(pstate, stmt, true);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	removed_since_vacuum = 0;
}

/*
 * Past this share of the cluster's NOTIFY queue, the worker stops
 * notifying.  The queue fills when a session LISTENs and stops reading; once
 * full, every NOTIFYing commit fails, and the worker's commit is what
 * removes applied rows: invalidation would stop with it.  Half full leaves
 * room for the application's own notifications.
 */
#define NOTIFY_QUEUE_MAX_USAGE 0.5

static bool
notify_queue_filling(void)
{
	LOCAL_FCINFO(fcinfo, 0);

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	return DatumGetFloat8(pg_notification_queue_usage(fcinfo)) > NOTIFY_QUEUE_MAX_USAGE;
}

/*
 * notify = applied: NOTIFY entity_cache about each key and pattern of the
 * batch, in the transaction that removes its rows, which commits only
 * after Redis acknowledged them: a listener that reads Redis on a
 * notification finds it clean.
 */
static void
notify_applied(EcQueueRow *rows, int n)
{
	static bool said_skipping = false;
	uint64		nkeys = 0;

	if (ec_notify != EC_NOTIFY_APPLIED)
		return;
	for (int i = 0; i < n; i++)
		if (rows[i].key != NULL && rows[i].applied)
			nkeys++;
	if (nkeys == 0)
		return;
	if (notify_queue_filling())
	{
		ec_count_notify_skipped(nkeys);
		if (!said_skipping)
			ereport(LOG,
					(errmsg("entity_cache: the NOTIFY queue is more than %d%% full, not notifying applied keys until it drains",
							(int) (NOTIFY_QUEUE_MAX_USAGE * 100)),
					 errhint("A session LISTENs without reading its notifications; see pg_notification_queue_usage().")));
		said_skipping = true;
		return;
	}
	said_skipping = false;
	for (int i = 0; i < n; i++)
		if (rows[i].key != NULL && rows[i].applied)
			ec_notify_send(rows[i].op, rows[i].key);
}

/*
 * Open the queue, or return NULL if there is none.  Locking by OID before
 * opening: a DROP EXTENSION that committed since the OID was looked up
 * must end in "not installed", not in an ERROR that ends the worker.
 */
static Relation
open_queue(void)
{
	Oid			relid = ec_queue_relid(true);

	if (!OidIsValid(relid))
		return NULL;
	return try_table_open(relid, RowExclusiveLock);
}

/*
 * After Redis answered: remove the rows it acknowledged (one node: all or
 * nothing; a cluster: the rows whose key's owner acknowledged them), tell
 * listeners, and schedule the second application.  Returns how many rows
 * were removed.
 */
static int
remove_applied(Relation rel, EcQueueRow *rows, int n, bool all_ok)
{
	int			nremoved = 0;

	for (int i = 0; i < n; i++)
	{
		if (all_ok)
			rows[i].applied = true;
		if (row_applied(rows, i))
			nremoved++;
	}
	if (nremoved > 0)
	{
		delete_rows(rel, rows, n);
		notify_applied(rows, n);
		/* what a racing cache-aside reader may have undone, do once more */
		ec_redelete_schedule(rows, n);
	}
	return nremoved;
}

/*
 * Apply one batch.  *drained_as_of is set (else left alone) when the batch
 * ends a pass over the whole table: every row visible to a snapshot taken
 * after the pass started has been seen by one of its batches, so
 * everything committed before that is now in Redis, which is what sync()
 * waits for.
 */
EcDrainResult
ec_drain_batch(int batch_size, uint64 *napplied, TimestampTz *drained_as_of,
			   StringInfo err)
{
	EcQueueRow   *rows;
	int			n;
	bool		ok;
	int			nremoved = 0;
	Relation	rel;

	*napplied = 0;
	ensure_batch_cxt();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();

	rel = open_queue();
	if (rel == NULL)
	{
		CommitTransactionCommand();
		return EC_DRAIN_NOT_INSTALLED;
	}
	/* a new queue (DROP and CREATE EXTENSION): its TIDs start afresh */
	if (RelationGetRelid(rel) != watermark_relid)
	{
		ItemPointerSetInvalid(&watermark);
		watermark_relid = RelationGetRelid(rel);
	}
	/* a pass starts: before the snapshot, which sees every commit by then */
	if (!ItemPointerIsValid(&watermark))
		pass_drained_as_of = GetCurrentTimestamp();
	if (!ec_queue_shape_ok(RelationGetDescr(rel)))
	{
		table_close(rel, NoLock);
		AbortCurrentTransaction();
		appendStringInfoString(err, "entity_cache.queue does not have the columns this library expects; "
							   "reinstall the extension");
		return EC_DRAIN_ERROR;
	}

	pgstat_report_activity(STATE_RUNNING, "applying entity_cache.queue");
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	n = fetch_rows(rel, batch_size, ec_mode == EC_MODE_REFRESH, &rows);
	ok = (n == 0) || apply_rows(rows, n, err);
	nremoved = remove_applied(rel, rows, n, ok);
	table_close(rel, NoLock);

	if (ok && n == batch_size)
		watermark = rows[n - 1].tid;
	else
		ItemPointerSetInvalid(&watermark);

	SPI_finish();
	PopActiveSnapshot();
	if (ok || nremoved > 0)
		CommitTransactionCommand();
	else
		AbortCurrentTransaction();
	/* autovacuum learns of the dead rows only through the statistics */
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextReset(batch_cxt);

	if (!ok)
	{
		*napplied = nremoved;
		return EC_DRAIN_ERROR;
	}
	*napplied = n;
	if (n < batch_size)
		*drained_as_of = pass_drained_as_of;

	/* not in the middle of a backlog: there the watermark skips the dead */
	removed_since_vacuum += n;
	if (removed_since_vacuum >= VACUUM_EVERY_ROWS && n < batch_size)
		vacuum_queue();
	return EC_DRAIN_OK;
}

/*
 * Apply rows once more, outside the queue (the redeletes of redelete.c):
 * the same commands as a batch.  Refresh mode and writes read the rows
 * again, in a transaction of their own; UNLINKs alone need none, and
 * skipping it keeps a redelete's round trip short, which is what a commit
 * arriving meanwhile waits for.
 */
bool
ec_apply_again(EcQueueRow *rows, int n, StringInfo err)
{
	bool		ok;

	ensure_batch_cxt();
	if (!batch_needs_lookup(rows, n))
	{
		/*
		 * No transaction: the current context is TopMemoryContext, where
		 * what the cluster path allocates per batch would stay for good.
		 */
		MemoryContext old = MemoryContextSwitchTo(batch_cxt);

		ok = apply_rows(rows, n, err);
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		return ok;
	}
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, "entity_cache redelete");
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	ok = apply_rows(rows, n, err);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextReset(batch_cxt);
	return ok;
}
