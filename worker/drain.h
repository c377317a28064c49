/*-------------------------------------------------------------------------
 *
 * drain.h
 *	  Apply one batch of the queue to Redis.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_DRAIN_H
#define EC_DRAIN_H

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"

#include "storage/itemptr.h"

/* one queue row as the worker applies it */
typedef struct EcQueueRow
{
	ItemPointerData tid;
	char		op;
	char	   *key;			/* NULL: nothing to do for this row */
	size_t		keylen;
	Oid			relid;
	char	   *template;		/* the trigger argument (see EcWatched) */
	Datum		vals;			/* text[], or 0 */
	TransactionId xmin;			/* the writer's transaction */
	int			dup_of;			/* the later row with the same key, or -1 */
	bool		applied;		/* acknowledged: may be removed */
} EcQueueRow;

typedef enum EcDrainResult
{
	EC_DRAIN_OK,				/* *napplied rows applied and removed */
	EC_DRAIN_ERROR,				/* err says why; *napplied rows were removed
								 * anyway (a cluster's nodes that answered) */
	EC_DRAIN_NOT_INSTALLED		/* no entity_cache.queue in this database */
} EcDrainResult;

extern EcDrainResult ec_drain_batch(int batch_size, uint64 *napplied,
									TimestampTz *drained_as_of, StringInfo err);

/* apply rows that are not (or no longer) in the queue: redelete.c */
extern bool ec_apply_again(EcQueueRow *rows, int n, StringInfo err);

#endif							/* EC_DRAIN_H */
