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

typedef enum EcDrainResult
{
	EC_DRAIN_OK,				/* *napplied rows applied and removed */
	EC_DRAIN_ERROR,				/* err says why; *napplied rows were removed
								 * anyway (a cluster's nodes that answered) */
	EC_DRAIN_NOT_INSTALLED		/* no entity_cache.queue in this database */
} EcDrainResult;

extern EcDrainResult ec_drain_batch(int batch_size, uint64 *napplied,
									TimestampTz *drained_as_of, StringInfo err);

#endif							/* EC_DRAIN_H */
