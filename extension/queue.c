/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  Append rows to entity_cache.queue from the capture trigger and the
 *	  SQL functions, once per key per transaction.
 *
 * This is on every writer's hot path, so rows go straight into the heap (the
 * way the catalog code inserts) instead of through SPI: no parse, no plan,
 * no executor start-up per statement, and no privilege check, which is what
 * lets writers of a watched table queue keys without any right on the queue.
 * The queue has no index and no sequence (see entity_cache--1.0.sql).  Rows
 * are buffered and written with one multi-insert per page-full, as COPY
 * does: a statement that changes 200,000 rows then costs a few thousand heap
 * calls and WAL records instead of 200,000.
 *
 * A key already queued by the same transaction is not queued again.  The
 * dedup table remembers which subtransaction queued each key, so that a
 * rolled-back savepoint forgets its keys exactly as the heap forgets its
 * rows: those are the keys added since it began, at the end of the list
 * of entries in the order added, so neither a commit nor an abort of a
 * subtransaction looks at the others (a loop of exception blocks was
 * quadratic).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "entity_cache.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

/*
 * Past this many distinct keys in one transaction (a bulk load) stop
 * remembering them: duplicates in the queue are harmless, memory that grows
 * with the load is not.
 */
#define EC_DEDUP_MAX_KEYS 100000

/* async.c's limit; a longer payload would make NOTIFY fail the write */
#define EC_NOTIFY_PAYLOAD_MAX (BLCKSZ - NAMEDATALEN - 128)

/* flush the buffered rows at this many, or this many bytes (as COPY does) */
#define EC_BUFFER_ROWS 1000
#define EC_BUFFER_BYTES 65535

struct EcQueueWriter
{
	Relation	rel;
	CatalogIndexState indstate;	/* none, unless someone added an index */
	TimestampTz now;
	MemoryContext slot_cxt;		/* the slots, and the tuples they form */
	MemoryContext cxt;			/* the buffered rows' values */
	TupleTableSlot **slots;		/* made as needed, up to EC_BUFFER_ROWS */
	int			nslots;			/* made so far */
	int			maxslots;		/* room in slots[] */
	int			nbuffered;
	size_t		nbytes;
};

typedef struct QueuedKey
{
	char	   *key;			/* op byte followed by the key; hash key */
	SubTransactionId subid;		/* subtransaction that queued it */
	struct QueuedKey *prev;		/* the entry added before it */
} QueuedKey;

/*
 * Per-transaction state, in TopTransactionContext.  Most transactions queue
 * one key: that one is kept in first_key, and the hash table is built only
 * when a second key comes along.
 */
static char *first_key = NULL;	/* op byte followed by the key */
static SubTransactionId first_subid = InvalidSubTransactionId;
static MemoryContext xact_cxt = NULL;
static HTAB *queued_keys = NULL;
static QueuedKey *last_added = NULL;
static SubTransactionId max_subid = InvalidSubTransactionId;

/*
 * Rows were queued: wake the worker once this transaction commits.  (A
 * rolled-back subtransaction may leave a wake-up with nothing to do: one
 * spare batch.)  A prepared transaction's commit happens elsewhere; the
 * worker's poll finds its rows.
 */
static bool wake_at_commit = false;

static void
reset_xact_state(void)
{
	/* the memory goes with TopTransactionContext */
	wake_at_commit = false;
	first_key = NULL;
	xact_cxt = NULL;
	queued_keys = NULL;
	last_added = NULL;
	max_subid = InvalidSubTransactionId;
}

static void
ec_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (wake_at_commit)
				ec_wake_worker();
			reset_xact_state();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			reset_xact_state();
			break;
		default:
			break;
	}
}

/*
 * Subtransaction ids only grow within a transaction, and a subtransaction
 * that begins while mySubid runs is inside it: the keys queued since
 * mySubid began are exactly those with a subid >= mySubid, at the end of
 * the list.  A commit changes nothing (an abort of an enclosing one finds
 * them by the same test); an abort forgets them.
 */
static void
ec_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB || max_subid < mySubid)
		return;					/* nothing queued at this level or below */

	if (first_key != NULL && first_subid >= mySubid)
		first_key = NULL;
	while (last_added != NULL && last_added->subid >= mySubid)
	{
		QueuedKey  *prev = last_added->prev;

		hash_search(queued_keys, &last_added->key, HASH_REMOVE, NULL);
		last_added = prev;
	}
}

/*
 * The queue's OID, looked up by name once per backend and forgotten when
 * its relcache entry is invalidated (DROP EXTENSION, or a full reset):
 * the name lookups were a fifth of the trigger's own time.
 */
static Oid	queue_relid = InvalidOid;

static void
ec_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == queue_relid)
		queue_relid = InvalidOid;
}

void
ec_queue_xact_init(void)
{
	RegisterXactCallback(ec_xact_callback, NULL);
	RegisterSubXactCallback(ec_subxact_callback, NULL);
	CacheRegisterRelcacheCallback(ec_relcache_callback, (Datum) 0);
}

Oid
ec_queue_relid(bool missing_ok)
{
	Oid			nsp;

	/* cheap when nothing is pending; a DROP EXTENSION clears the cache */
	AcceptInvalidationMessages();
	if (OidIsValid(queue_relid))
		return queue_relid;

	nsp = get_namespace_oid(EC_SCHEMA, missing_ok);
	if (OidIsValid(nsp))
		queue_relid = get_relname_relid(EC_QUEUE, nsp);
	if (!OidIsValid(queue_relid) && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("entity_cache.queue does not exist"),
				 errhint("Run CREATE EXTENSION entity_cache in this database.")));
	return queue_relid;
}

/*
 * Does the queue have the columns, in the order and of the types, that the
 * C code reads and writes by position?  A superuser can change an
 * extension's table; reading a dropped or retyped column by position would
 * read garbage.
 */
bool
ec_queue_shape_ok(TupleDesc desc)
{
	static const Oid types[Natts_ec_queue] = {
		CHAROID, TEXTOID, OIDOID, TEXTOID, TEXTARRAYOID, TIMESTAMPTZOID
	};

	if (desc->natts != Natts_ec_queue)
		return false;
	for (int i = 0; i < Natts_ec_queue; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != types[i])
			return false;
	}
	return true;
}

/*
 * Can the catalog insert path maintain every index of the queue?  It
 * handles plain immediate indexes only: an expression index would crash
 * it (it has no executor state to evaluate one), and a partial or
 * exclusion index would be maintained wrongly.
 */
static bool
queue_indexes_ok(CatalogIndexState indstate)
{
	for (int i = 0; i < indstate->ri_NumIndices; i++)
	{
		IndexInfo  *ii = indstate->ri_IndexRelationInfo[i];

		if (ii->ii_Expressions != NIL || ii->ii_Predicate != NIL ||
			ii->ii_ExclusionOps != NULL ||
			!indstate->ri_IndexRelationDescs[i]->rd_index->indimmediate)
			return false;
	}
	return true;
}

EcQueueWriter *
ec_queue_open(void)
{
	EcQueueWriter *w = palloc(sizeof(EcQueueWriter));
	Oid			relid = ec_queue_relid(false);

	w->rel = table_open(relid, RowExclusiveLock);
	if (!ec_queue_shape_ok(RelationGetDescr(w->rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("entity_cache.queue does not have the columns this library expects"),
				 errdetail("Expected (op \"char\", key text, relid oid, template text, vals text[], queued_at timestamptz), none dropped."),
				 errhint("The table was changed by hand, or the extension's SQL and library versions differ. "
						 "Reinstall: DROP EXTENSION entity_cache CASCADE; CREATE EXTENSION entity_cache; then watch() again.")));
	w->indstate = CatalogOpenIndexes(w->rel);
	if (!queue_indexes_ok(w->indstate))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("entity_cache.queue has an index this library cannot maintain"),
				 errdetail("Only plain column indexes are supported on the queue: no expression, partial, exclusion or deferrable ones."),
				 errhint("Drop that index from entity_cache.queue (it needs none).")));
	w->now = GetCurrentTimestamp();
	w->slot_cxt = CurrentMemoryContext;
	w->cxt = AllocSetContextCreate(CurrentMemoryContext, "entity_cache queue rows",
								   ALLOCSET_DEFAULT_SIZES);
	/* most statements queue one row: grow the array only for those that don't */
	w->maxslots = 8;
	w->slots = palloc(sizeof(TupleTableSlot *) * w->maxslots);
	w->nslots = 0;
	w->nbuffered = 0;
	w->nbytes = 0;
	return w;
}

/*
 * Write the buffered rows to the heap.  A single row (the single-row
 * UPDATE, the common case) takes the plain insert: a multi-insert's set-up
 * and WAL record are larger for one tuple.
 */
static void
flush_rows(EcQueueWriter *w)
{
	if (w->nbuffered == 0)
		return;
	if (w->nbuffered == 1)
	{
		TupleTableSlot *slot = w->slots[0];
		HeapTuple	tuple = heap_form_tuple(RelationGetDescr(w->rel),
											slot->tts_values, slot->tts_isnull);

		CatalogTupleInsertWithInfo(w->rel, tuple, w->indstate);
		heap_freetuple(tuple);
	}
	else
		CatalogTuplesMultiInsertWithInfo(w->rel, w->slots, w->nbuffered, w->indstate);
	for (int i = 0; i < w->nbuffered; i++)
		ExecClearTuple(w->slots[i]);
	MemoryContextReset(w->cxt);
	w->nbuffered = 0;
	w->nbytes = 0;
}

void
ec_queue_close(EcQueueWriter *w)
{
	flush_rows(w);
	for (int i = 0; i < w->nslots; i++)
		ExecDropSingleTupleTableSlot(w->slots[i]);
	MemoryContextDelete(w->cxt);
	CatalogCloseIndexes(w->indstate);
	/* keep the lock until the end of the transaction, as the executor does */
	table_close(w->rel, NoLock);
	pfree(w);
}

/*
 * Remember (op, key) for this transaction.  False if it was already queued
 * by this transaction in a subtransaction that has not been rolled back.
 */
static bool
remember_key(char op, const char *key)
{
	size_t		len = strlen(key);
	char	   *k;
	QueuedKey  *entry;
	bool		found;
	SubTransactionId subid = GetCurrentSubTransactionId();

	if (subid > max_subid)
		max_subid = subid;

	if (queued_keys == NULL && first_key == NULL)
	{
		first_key = MemoryContextAlloc(TopTransactionContext, len + 2);
		first_key[0] = op;
		memcpy(first_key + 1, key, len + 1);
		first_subid = subid;
		return true;
	}
	if (queued_keys == NULL &&
		first_key[0] == op && strcmp(first_key + 1, key) == 0)
		return false;

	if (queued_keys == NULL)
	{
		xact_cxt = AllocSetContextCreate(TopTransactionContext,
										 "entity_cache queued keys",
										 ALLOCSET_DEFAULT_SIZES);
		queued_keys = ec_cstring_hash_create("entity_cache queued keys", 64,
											 sizeof(QueuedKey), xact_cxt);
		/* the first key moves in (unless a rolled-back savepoint dropped it) */
		if (first_key != NULL)
		{
			entry = hash_search(queued_keys, &first_key, HASH_ENTER, &found);
			entry->key = first_key;
			entry->subid = first_subid;
			entry->prev = NULL;
			last_added = entry;
			first_key = NULL;
		}
	}

	if (hash_get_num_entries(queued_keys) >= EC_DEDUP_MAX_KEYS)
		return true;

	k = MemoryContextAlloc(xact_cxt, len + 2);
	k[0] = op;
	memcpy(k + 1, key, len + 1);

	entry = hash_search(queued_keys, &k, HASH_ENTER, &found);
	if (found)
	{
		pfree(k);
		return false;
	}
	entry->key = k;
	entry->subid = subid;
	entry->prev = last_added;
	last_added = entry;
	return true;
}

/*
 * Queue one key (op EC_OP_KEY) or one MATCH pattern (EC_OP_FLUSH).  relid,
 * template and vals let the worker find the row again in refresh mode; they
 * may be InvalidOid / NULL.  Returns whether a row was added.
 */
bool
ec_queue_add(EcQueueWriter *w, char op, const char *key, Oid relid,
			 const char *template, Datum vals, bool vals_null)
{
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;
	MemoryContext old;
	size_t		keylen;

	if (!remember_key(op, key))
		return false;

	if (w->nbuffered == w->nslots)
	{
		/* the caller may reset its context per row: not ours */
		old = MemoryContextSwitchTo(w->slot_cxt);
		if (w->nslots == w->maxslots)
		{
			w->maxslots = Min(w->maxslots * 2, EC_BUFFER_ROWS);
			w->slots = repalloc(w->slots, sizeof(TupleTableSlot *) * w->maxslots);
		}
		w->slots[w->nslots++] = MakeSingleTupleTableSlot(RelationGetDescr(w->rel),
														 &TTSOpsHeapTuple);
		MemoryContextSwitchTo(old);
	}
	slot = w->slots[w->nbuffered++];
	ExecClearTuple(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;

	/* the values live until flush_rows() writes them */
	old = MemoryContextSwitchTo(w->cxt);
	memset(nulls, false, sizeof(bool) * Natts_ec_queue);
	values[Anum_ec_queue_op - 1] = CharGetDatum(op);
	values[Anum_ec_queue_key - 1] = CStringGetTextDatum(key);
	values[Anum_ec_queue_relid - 1] = ObjectIdGetDatum(relid);
	nulls[Anum_ec_queue_relid - 1] = !OidIsValid(relid);
	if (template)
		values[Anum_ec_queue_template - 1] = CStringGetTextDatum(template);
	else
		nulls[Anum_ec_queue_template - 1] = true;
	values[Anum_ec_queue_vals - 1] = vals_null ? (Datum) 0 : datumCopy(vals, false, -1);
	nulls[Anum_ec_queue_vals - 1] = vals_null;
	values[Anum_ec_queue_queued_at - 1] = TimestampTzGetDatum(w->now);
	MemoryContextSwitchTo(old);
	ExecStoreVirtualTuple(slot);

	keylen = strlen(key);
	w->nbytes += keylen + (template ? strlen(template) : 0) +
		(vals_null ? 0 : VARSIZE_ANY(DatumGetPointer(vals))) + 64;
	if (w->nbuffered == EC_BUFFER_ROWS || w->nbytes >= EC_BUFFER_BYTES)
		flush_rows(w);

	wake_at_commit = true;

	if (ec_notify == EC_NOTIFY_COMMIT)
		ec_notify_send(op, key);

	return true;
}

/*
 * Count notifications that were not sent, for entity_cache.status.  Without
 * preloading there is no shared memory to count in.
 */
void
ec_count_notify_skipped(uint64 n)
{
	if (ec_shared == NULL || n == 0)
		return;
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->notify_skipped += n;
	SpinLockRelease(&ec_shared->mutex);
}

/*
 * NOTIFY entity_cache about one queued key or flush pattern, in the current
 * transaction: sent at its commit.  The writer calls this with notify =
 * commit, the worker with notify = applied.
 *
 * A listener must be able to tell a key from a pattern, and keys are any
 * text.  So a pattern is sent as "flush:<pattern>", and a key that begins
 * with "flush:" or "key:" is sent as "key:<key>"; every other key is sent
 * as it is.  A listener reads a payload as: "flush:" -> a pattern (Redis
 * glob) whose keys are gone; "key:" -> the key after the prefix; anything
 * else -> the key.
 *
 * A payload longer than NOTIFY accepts would fail the transaction: it is
 * not sent, and counted.
 */
void
ec_notify_send(char op, const char *key)
{
	size_t		len = strlen(key);
	const char *prefix = "";
	char	   *payload;

	if (op == EC_OP_FLUSH)
		prefix = EC_NOTIFY_FLUSH_PREFIX;
	else if (strncmp(key, EC_NOTIFY_FLUSH_PREFIX, strlen(EC_NOTIFY_FLUSH_PREFIX)) == 0 ||
			 strncmp(key, EC_NOTIFY_KEY_PREFIX, strlen(EC_NOTIFY_KEY_PREFIX)) == 0)
		prefix = EC_NOTIFY_KEY_PREFIX;

	if (len + strlen(prefix) >= EC_NOTIFY_PAYLOAD_MAX)
	{
		ec_count_notify_skipped(1);
		return;
	}
	if (prefix[0] == '\0')
	{
		Async_Notify(EC_NOTIFY_CHANNEL, key);
		return;
	}
	payload = psprintf("%s%s", prefix, key);
	Async_Notify(EC_NOTIFY_CHANNEL, payload);
	pfree(payload);
}
