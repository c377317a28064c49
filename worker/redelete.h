/*-------------------------------------------------------------------------
 *
 * redelete.h
 *	  Apply every applied key once more after entity_cache.redelete_delay,
 *	  so that a value a racing cache-aside reader SET after the first
 *	  application lives at most that long.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_REDELETE_H
#define EC_REDELETE_H

#include "drain.h"

/* sample the oldest running transaction (each turn of the main loop) */
extern void ec_redelete_note_horizon(void);

/* remember the key rows of an applied batch (copies them) */
extern void ec_redelete_schedule(EcQueueRow *rows, int n);

/* milliseconds until the earliest redelete is due, at most max_ms */
extern long ec_redelete_next_wait(long max_ms);

/* apply (one round trip of) the redeletes that are due; false on error */
extern bool ec_redelete_run_due(StringInfo err);

#endif							/* EC_REDELETE_H */
