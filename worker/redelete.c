/*-------------------------------------------------------------------------
 *
 * redelete.c
 *	  Apply every key again after the worker applied it: at
 *	  redelete_delay, half of it, a quarter, ... (redelete_steps
 *	  applications in all).
 *
 * A cache-aside reader that read the old row just before a write committed
 * and SETs it just after the worker's UNLINK leaves a stale value for the
 * whole TTL.  Applying the key once more (UNLINK again in delete mode, read
 * the row again and SET it in refresh mode) removes that value, provided
 * the reader's read-to-SET window is shorter than redelete_delay.  One
 * application at the delay leaves such a value up to the whole delay, even
 * when it landed a millisecond after the invalidation, which is when most
 * racing fills land.  Halving steps remove a value that landed x ms after
 * the invalidation by the first step after x: it lives less than x (at
 * least the first step, delay / 2^(steps-1)), at one UNLINK per step.
 *
 * A key whose change committed more than redelete_delay before the worker
 * applied it gets no redelete: a racing fill needs a row read before the
 * commit and a SET after the application, that is a read-to-SET window
 * longer than their distance, which the delay is chosen to exceed.  This
 * is what keeps a backlog drain (after an outage) at its speed: its keys
 * committed long ago.  Commit times are not recorded (track_commit_timestamp
 * is off by default), so the worker samples, every delay/16 or so, the
 * oldest transaction still running (GetOldestActiveTransactionId): every
 * transaction id before it had ended at that moment.  A queue row whose
 * writer's id precedes the sample taken at least redelete_delay ago
 * committed at least that long ago.  Without such a sample (the worker has
 * just started) every key gets its redeletes.
 *
 * Pending redeletes live in this process's memory only: a worker restart
 * or a server crash loses those not yet done, i.e. the redeletes of keys
 * applied during the last redelete_delay before the restart (the README
 * says so).  Keeping them in the queue would double the queue's WAL for a
 * window of at most one second.
 *
 * Per key (and op: a flush pattern is not the key of the same text) there
 * is at most one pending entry, in a hash table by key and in a pairing
 * heap by due time.  A key applied again while an entry is pending starts
 * over at the first step: the new application starts a new race window,
 * and the old window ends with it (it removes what a racer SET
 * meanwhile).  Past MAX_PENDING entries the earliest due are applied early,
 * once, and forgotten: memory stays bounded under a write storm over many
 * distinct keys.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redelete.h"

#include "entity_cache.h"

#include "access/transam.h"
#include "access/xlog.h"
#include "lib/pairingheap.h"
#include "storage/procarray.h"
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
	TimestampTz applied_at;		/* the queue row's application */
	int			step;			/* the next step: 0 .. steps - 1 */
	TimestampTz due;			/* of that step */
	pairingheap_node ph_node;	/* in the heap by due */
} Pending;

static HTAB *pending = NULL;
static pairingheap *by_due = NULL;
static MemoryContext redelete_cxt = NULL;

/* samples of the oldest running transaction: see the header comment */
#define HORIZONS 64
typedef struct Horizon
{
	TimestampTz at;
	TransactionId oldest_running;	/* every id before it had ended by then */
} Horizon;

static Horizon horizons[HORIZONS];
static int	nhorizons = 0;
static int	next_horizon = 0;

static void
publish_count(void)
{
	uint64		n = pending ? hash_get_num_entries(pending) : 0;

	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->redelete_pending = n;
	SpinLockRelease(&ec_shared->mutex);
}

/* pairingheap is a max-heap: the earliest due compares greatest */
static int
due_cmp(const pairingheap_node *a, const pairingheap_node *b, void *arg)
{
	TimestampTz da = pairingheap_const_container(Pending, ph_node, a)->due;
	TimestampTz db = pairingheap_const_container(Pending, ph_node, b)->due;

	return (da < db) ? 1 : (da > db) ? -1 : 0;
}

static void
init_pending(void)
{
	redelete_cxt = AllocSetContextCreate(TopMemoryContext, "entity_cache redelete",
										 ALLOCSET_DEFAULT_SIZES);
	pending = ec_cstring_hash_create("entity_cache redelete", 1024, sizeof(Pending),
									 redelete_cxt);
	by_due = MemoryContextAllocZero(redelete_cxt, sizeof(pairingheap));
	by_due->ph_compare = due_cmp;
}

/*
 * When step (of steps) of a key applied at applied_at falls due: the last
 * at redelete_delay, each earlier one at half the next.  Settings changed
 * by a reload apply from the next step on.
 */
static TimestampTz
step_due(TimestampTz applied_at, int step)
{
	int			steps = Max(ec_redelete_steps, 1);
	int			halvings = Max(steps - 1 - step, 0);

	return applied_at + ((TimestampTz) ec_redelete_delay_ms * 1000) / (1 << halvings);
}

static bool
is_last_step(int step)
{
	return step >= ec_redelete_steps - 1;
}

/*
 * The strings of an entry are freed one by one when it is done: the
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

static void
forget(Pending *p)
{
	EcQueueRow	r = p->row;

	hash_search(pending, &p->key, HASH_REMOVE, NULL);
	free_row(&r);
}

/*
 * Sample the oldest running transaction, at most every delay/16: HORIZONS
 * samples then reach back four delays, long enough to find one taken a
 * delay ago.
 */
void
ec_redelete_note_horizon(void)
{
	TimestampTz now;
	const Horizon *last = &horizons[(next_horizon + HORIZONS - 1) % HORIZONS];

	if (ec_redelete_delay_ms <= 0 || RecoveryInProgress())
		return;
	now = GetCurrentTimestamp();
	if (nhorizons > 0 &&
		now - last->at < (TimestampTz) Max(ec_redelete_delay_ms / 16, 1) * 1000)
		return;
	horizons[next_horizon].at = now;
	horizons[next_horizon].oldest_running = GetOldestActiveTransactionId();
	next_horizon = (next_horizon + 1) % HORIZONS;
	nhorizons = Min(nhorizons + 1, HORIZONS);
}

/*
 * The newest sample taken at least redelete_delay before now: a writer
 * whose id precedes it committed at least that long ago.  Invalid if there
 * is none.
 */
static TransactionId
settled_before(TimestampTz now)
{
	TimestampTz cutoff = TimestampTzPlusMilliseconds(now, -ec_redelete_delay_ms);
	TransactionId best = InvalidTransactionId;
	TimestampTz best_at = 0;

	for (int i = 0; i < nhorizons; i++)
	{
		if (horizons[i].at <= cutoff && horizons[i].at > best_at)
		{
			best = horizons[i].oldest_running;
			best_at = horizons[i].at;
		}
	}
	return best;
}

void
ec_redelete_schedule(EcQueueRow *rows, int n)
{
	TimestampTz now;
	TransactionId settled;

	if (ec_redelete_delay_ms <= 0)
		return;
	if (pending == NULL)
		init_pending();
	now = GetCurrentTimestamp();
	settled = settled_before(now);

	/*
	 * A row whose key a later row of the batch repeats was applied by that
	 * row, which must then count as the newer of the two writers.
	 */
	for (int i = 0; i < n; i++)
	{
		EcQueueRow *carrier;

		if (rows[i].dup_of < 0 || !TransactionIdIsNormal(rows[i].xmin))
			continue;
		carrier = &rows[rows[i].dup_of];
		if (!TransactionIdIsNormal(carrier->xmin) ||
			TransactionIdFollows(rows[i].xmin, carrier->xmin))
			carrier->xmin = rows[i].xmin;
	}

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
		/* committed more than the delay ago: no racing fill can still land */
		if (TransactionIdIsNormal(settled) && TransactionIdIsValid(rows[i].xmin) &&
			TransactionIdPrecedes(rows[i].xmin, settled))
			continue;
		copy_row(&copy, &rows[i]);
		hashkey = copy.key - 1;
		p = hash_search(pending, &hashkey, HASH_ENTER, &found);
		if (found)
		{
			pairingheap_remove(by_due, &p->ph_node);
			free_row(&p->row);
		}
		p->row = copy;
		p->key = hashkey;
		p->applied_at = now;
		p->step = 0;
		p->due = step_due(now, p->step);
		pairingheap_add(by_due, &p->ph_node);
	}
	publish_count();
}

long
ec_redelete_next_wait(long max_ms)
{
	Pending    *head;
	long		ms;
	TimestampTz now;

	if (pending == NULL || pairingheap_is_empty(by_due))
		return max_ms;
	if (hash_get_num_entries(pending) > MAX_PENDING)
		return 0;
	head = pairingheap_container(Pending, ph_node, pairingheap_first(by_due));
	now = GetCurrentTimestamp();
	ms = TimestampDifferenceMilliseconds(now, head->due);
	/* TimestampDifferenceMilliseconds rounds down: do not wake too early */
	if (head->due > now)
		ms++;
	return Min(ms, max_ms);
}

/*
 * After a round trip of redeletes: an entry with steps left waits for the
 * next; one done (or taken early to keep memory bounded) is forgotten.
 * After a failure an entry that was not acknowledged goes back as it was.
 * On a cluster each key is acknowledged by its own node (rows[i].applied):
 * a node down, or a slot without a primary, holds back only its own keys,
 * not every entry taken with them, which would then stay pending for as
 * long as that lasts, however many keys are applied meanwhile.
 */
static void
requeue_taken(Pending **taken, const EcQueueRow *rows, bool *early, int n, bool ok)
{
	for (int i = 0; i < n; i++)
	{
		Pending    *p = taken[i];
		bool		done = ok || rows[i].applied;

		if (done && (early[i] || is_last_step(p->step)))
		{
			forget(p);
			continue;
		}
		if (done)
		{
			p->step++;
			p->due = step_due(p->applied_at, p->step);
		}
		pairingheap_add(by_due, &p->ph_node);
	}
}

/*
 * Apply the first RUN_CHUNK due entries in one round trip.  On a failure,
 * returns false with err said ("redelete: ..."); the caller records it
 * and backs off, as for a failed batch.
 */
bool
ec_redelete_run_due(StringInfo err)
{
	TimestampTz now = GetCurrentTimestamp();
	EcQueueRow *rows;
	Pending   **taken;
	bool	   *early;
	int			n = 0;
	StringInfoData why;
	bool		ok;

	if (pending == NULL || pairingheap_is_empty(by_due) || !ec_redis_is_connected())
		return true;
	/* the common case after a batch: nothing due yet */
	if (pairingheap_container(Pending, ph_node, pairingheap_first(by_due))->due > now &&
		hash_get_num_entries(pending) <= MAX_PENDING)
		return true;
	rows = palloc(sizeof(EcQueueRow) * RUN_CHUNK);
	taken = palloc(sizeof(Pending *) * RUN_CHUNK);
	early = palloc(sizeof(bool) * RUN_CHUNK);
	while (n < RUN_CHUNK && !pairingheap_is_empty(by_due))
	{
		Pending    *p = pairingheap_container(Pending, ph_node, pairingheap_first(by_due));
		bool		over = hash_get_num_entries(pending) - n > MAX_PENDING;

		if (p->due > now && !over)
			break;
		pairingheap_remove_first(by_due);
		rows[n] = p->row;
		rows[n].applied = false;	/* set by the application, if acknowledged */
		early[n] = over && p->due > now;
		taken[n++] = p;
	}
	/* the check above makes n at least 1 */
	initStringInfo(&why);
	ok = ec_apply_again(rows, n, &why);
	requeue_taken(taken, rows, early, n, ok);
	publish_count();
	if (!ok)
		appendStringInfo(err, "redelete: %s", why.data);
	pfree(why.data);
	pfree(rows);
	pfree(taken);
	pfree(early);
	return ok;
}
