/*-------------------------------------------------------------------------
 *
 * redelete.c
 *	  The second application of every key, redelete_delay after the first.
 *
 * A cache-aside reader that read the old row just before a write committed
 * and SETs it just after the worker's UNLINK leaves a stale value for the
 * whole TTL.  Applying the key once more after the delay (UNLINK again in
 * delete mode, read the row again and SET it in refresh mode) removes that
 * value, provided the reader's read-to-SET window is shorter than the delay.
 *
 * Pending redeletes live in this process's memory only: a worker restart
 * or a server crash loses those not yet due, i.e. the redeletes of keys
 * applied during the last redelete_delay before the restart (the README
 * says so).  Keeping them in the queue would double the queue's WAL for a
 * window of at most one second.
 *
 * Per key (and op: a flush pattern is not the key of the same text) there
 * is at most one pending entry: a key applied again while its
 * redelete is pending moves to the back of the line with a new due time
 * (the new application starts a new race window, and the old window ends
 * with the new application, which removes what a racer SET meanwhile).
 * Entries are kept in the order they were scheduled, which is the order of
 * their due times while the delay is unchanged.  Past MAX_PENDING entries
 * the oldest are applied early rather than remembered: memory stays
 * bounded under a write storm over many distinct keys.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redelete.h"

#include "entity_cache.h"

#include "lib/ilist.h"
#include "utils/array.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_client.h"

/* more than a second of applying keys at any rate seen in the benchmarks */
#define MAX_PENDING 100000

/* keys per round trip of redeletes */
#define RUN_CHUNK 1000

typedef struct Pending
{
	char	   *key;			/* hash key: the op, then row.key, NUL-terminated */
	EcQueueRow	row;			/* what to apply again; its strings are ours */
	TimestampTz due;
	dlist_node	node;			/* in schedule order */
} Pending;

static HTAB *pending = NULL;
static dlist_head order = DLIST_STATIC_INIT(order);
static MemoryContext redelete_cxt = NULL;

static void
publish_count(void)
{
	uint64		n = pending ? hash_get_num_entries(pending) : 0;

	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->redelete_pending = n;
	SpinLockRelease(&ec_shared->mutex);
}

static void
init_pending(void)
{
	redelete_cxt = AllocSetContextCreate(TopMemoryContext, "entity_cache redelete",
										 ALLOCSET_DEFAULT_SIZES);
	pending = ec_cstring_hash_create("entity_cache redelete", 1024, sizeof(Pending),
									 redelete_cxt);
}

/*
 * The strings of an entry are freed one by one when it is applied: the
 * table lives as long as the worker, and entries come and go continuously,
 * so no context could be reset as a whole.
 */
static void
free_row(EcQueueRow *r)
{
	pfree(r->key - 1);			/* the op byte before it starts the block */
	if (r->template)
		pfree(r->template);
	if (r->vals)
		pfree(DatumGetPointer(r->vals));
}

static void
copy_row(EcQueueRow *dst, const EcQueueRow *src)
{
	MemoryContext old = MemoryContextSwitchTo(redelete_cxt);

	char	   *buf = palloc(src->keylen + 2);

	*dst = *src;
	buf[0] = src->op;
	memcpy(buf + 1, src->key, src->keylen);
	buf[src->keylen + 1] = '\0';
	dst->key = buf + 1;
	dst->template = src->template ? pstrdup(src->template) : NULL;
	dst->vals = src->vals ?
		PointerGetDatum(DatumGetArrayTypePCopy(src->vals)) : (Datum) 0;
	MemoryContextSwitchTo(old);
}

void
ec_redelete_schedule(EcQueueRow *rows, int n)
{
	TimestampTz due;

	if (ec_redelete_delay_ms <= 0)
		return;
	if (pending == NULL)
		init_pending();
	due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ec_redelete_delay_ms);

	for (int i = 0; i < n; i++)
	{
		Pending    *p;
		bool		found;
		EcQueueRow	copy;
		char	   *hashkey;

		/* keys with a NUL cannot be hash keys here; they cannot race either */
		if (rows[i].key == NULL || !rows[i].applied ||
			strlen(rows[i].key) != rows[i].keylen)
			continue;
		copy_row(&copy, &rows[i]);
		hashkey = copy.key - 1;
		p = hash_search(pending, &hashkey, HASH_ENTER, &found);
		if (found)
		{
			dlist_delete(&p->node);
			free_row(&p->row);
		}
		p->row = copy;
		p->key = hashkey;
		p->due = due;
		dlist_push_tail(&order, &p->node);
	}
	publish_count();
}

long
ec_redelete_next_wait(long max_ms)
{
	Pending    *head;
	long		ms;

	if (pending == NULL || dlist_is_empty(&order))
		return max_ms;
	if (hash_get_num_entries(pending) > MAX_PENDING)
		return 0;
	head = dlist_head_element(Pending, node, &order);
	ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), head->due);
	/* TimestampDifferenceMilliseconds rounds down: do not wake too early */
	if (ms > 0 || head->due > GetCurrentTimestamp())
		ms++;
	return Min(ms, max_ms);
}

/*
 * Apply the first RUN_CHUNK due entries in one round trip and forget them.
 * On failure they stay pending and the error goes to status like any other:
 * the connection is gone then, and the worker's loop reconnects first.
 */
bool
ec_redelete_run_due(void)
{
	TimestampTz now = GetCurrentTimestamp();
	EcQueueRow *rows;
	Pending   **taken;
	int			n = 0;
	dlist_iter	it;
	StringInfoData err;
	bool		ok;

	if (pending == NULL || dlist_is_empty(&order) || !ec_redis_is_connected())
		return true;
	rows = palloc(sizeof(EcQueueRow) * RUN_CHUNK);
	taken = palloc(sizeof(Pending *) * RUN_CHUNK);
	dlist_foreach(it, &order)
	{
		Pending    *p = dlist_container(Pending, node, it.cur);

		if (n == RUN_CHUNK ||
			(p->due > now && hash_get_num_entries(pending) - n <= MAX_PENDING))
			break;
		rows[n] = p->row;
		taken[n++] = p;
	}
	if (n == 0)
	{
		pfree(rows);
		pfree(taken);
		return true;
	}

	initStringInfo(&err);
	ok = ec_apply_again(rows, n, &err);
	if (ok)
	{
		for (int i = 0; i < n; i++)
		{
			EcQueueRow	r = taken[i]->row;

			dlist_delete(&taken[i]->node);
			hash_search(pending, &taken[i]->key, HASH_REMOVE, NULL);
			free_row(&r);
		}
		publish_count();
	}
	else
		ec_set_error("redelete: %s", err.data);
	pfree(err.data);
	pfree(rows);
	pfree(taken);
	return ok;
}
