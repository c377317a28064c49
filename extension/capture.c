/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The capture trigger: statement-level, AFTER, with transition tables,
 *	  so a COPY of a million rows is one trigger call and a single-row
 *	  UPDATE is one call that reads one old and one new row.
 *
 * Arguments are the key templates.  INSERT queues the keys of the new rows,
 * DELETE those of the old rows, UPDATE both (so a changed key column
 * invalidates the old key and the new) unless the UPDATE sets no template
 * column (then old and new keys are the same: the new rows alone), TRUNCATE
 * a flush of each template's pattern.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "keys.h"

#include "access/sysattr.h"
#include "commands/trigger.h"
#include "nodes/bitmapset.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(entity_cache_capture);

/*
 * Queue the keys of every row of the given transition tables (an UPDATE
 * that may change keys passes two: the old rows and the new ones, so a
 * changed key column queues both keys; an unchanged one is queued once, by
 * the dedup in queue.c).
 */
static void
capture_rows(EcQueueWriter *w, Relation rel, Tuplestorestate **stores, int nstores,
			 EcBoundTemplate *bts, EcWatched **wts, int nbts)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext,
												 "entity_cache capture row",
												 ALLOCSET_SMALL_SIZES);
	MemoryContext oldcxt;
	EcRowValues rv;
	StringInfoData key;
	int			nest;

	/*
	 * Only refresh mode needs to find the row again; in delete mode the
	 * queue row is the key alone, which keeps the writer's WAL small.  Rows
	 * queued before a switch to refresh mode are simply deleted.
	 */
	bool		lookup = (ec_mode == EC_MODE_REFRESH);

	ec_row_values_init(&rv, desc);
	rv.slot = slot;
	initStringInfo(&key);

	/*
	 * Keys render under fixed settings (keys.c), switched to only when a
	 * template's column has a type whose text depends on them.
	 */
	nest = ec_render_begin(bts, nbts);

	for (int s = 0; s < nstores; s++)
	{
		Tuplestorestate *ts = stores[s];

		/*
		 * Read with a pointer of our own, as a NamedTuplestoreScan does:
		 * another trigger on the table may read the same transition table.
		 */
		tuplestore_select_read_pointer(ts, tuplestore_alloc_read_pointer(ts, EXEC_FLAG_REWIND));
		tuplestore_rescan(ts);

		while (tuplestore_gettupleslot(ts, true, false, slot))
		{
			oldcxt = MemoryContextSwitchTo(rowcxt);
			for (int i = 0; i < nbts; i++)
			{
				Datum		vals = (Datum) 0;

				if (!bts[i].complete)
					continue;
				if (ec_render_key(&bts[i], ec_row_value, &rv, &key, lookup ? &vals : NULL))
					ec_queue_add(w, EC_OP_KEY, key.data,
								 lookup ? RelationGetRelid(rel) : InvalidOid,
								 lookup ? wts[i]->arg : NULL, vals, !lookup);
			}
			MemoryContextSwitchTo(oldcxt);
			MemoryContextReset(rowcxt);
		}
	}

	ec_canonical_end(nest);
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(rowcxt);
}

/*
 * May the old rows of this UPDATE have other keys than its new rows?  Only
 * if it sets a column some template reads (tg_updatedcols; generated
 * columns included), or if a BEFORE ROW UPDATE trigger (of the table or
 * of a partition) could change any column behind the statement's back.
 * Not reading the old rows halves a bulk UPDATE's rendering.
 */
static bool
update_may_change_keys(TriggerData *td, EcBoundTemplate *bts, int nbts)
{
	TriggerDesc *trigdesc = td->tg_relation->trigdesc;

	/*
	 * A partition's (or inheritance child's) own BEFORE ROW trigger fires
	 * for rows updated through this table, and this table's trigdesc does
	 * not show it: with descendants, read the old rows.
	 */
	if (td->tg_updatedcols == NULL ||
		(trigdesc != NULL && trigdesc->trig_update_before_row) ||
		td->tg_relation->rd_rel->relhassubclass)
		return true;
	for (int i = 0; i < nbts; i++)
	{
		if (!bts[i].complete)
			return true;
		for (int p = 0; p < bts[i].parsed.nparts; p++)
			if (bts[i].attnums[p] != 0 &&
				bms_is_member(bts[i].attnums[p] - FirstLowInvalidHeapAttributeNumber,
							  td->tg_updatedcols))
				return true;
	}
	return false;
}

Datum
entity_cache_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Trigger    *trig;
	Relation	rel;
	EcBoundTemplate *bts;
	EcWatched **wts;
	EcQueueWriter *w;
	bool		truncate;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("entity_cache.capture() can only be called as a trigger"),
				 errhint("Use entity_cache.watch(table) to install it.")));
	if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("entity_cache.capture() must be an AFTER ... FOR EACH STATEMENT trigger"),
				 errhint("Use entity_cache.watch(table) to install it.")));

	trig = td->tg_trigger;
	rel = td->tg_relation;
	truncate = TRIGGER_FIRED_BY_TRUNCATE(td->tg_event);

	if (trig->tgnargs < 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("entity_cache.capture() needs key templates as trigger arguments"),
				 errhint("Use entity_cache.watch(table) to install it.")));

	if (!truncate && td->tg_oldtable == NULL && td->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("entity_cache.capture() needs transition tables"),
				 errhint("Use entity_cache.watch(table) to install it.")));

	bts = palloc(sizeof(EcBoundTemplate) * trig->tgnargs);
	wts = palloc(sizeof(EcWatched *) * trig->tgnargs);
	for (int i = 0; i < trig->tgnargs; i++)
	{
		wts[i] = ec_split_watch_arg(trig->tgargs[i]);
		ec_bind_template(&bts[i], wts[i]->template, RelationGetDescr(rel));
		if (!bts[i].complete)
			ereport(WARNING,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("key template \"%s\" of table \"%s\" names column \"%s\", which no longer exists",
							bts[i].text, RelationGetRelationName(rel), bts[i].missing),
					 errdetail("Every key of the template is flushed instead."),
					 errhint("Call entity_cache.unwatch() and entity_cache.watch() with a template that names existing columns.")));
	}

	w = ec_queue_open();
	for (int i = 0; i < trig->tgnargs; i++)
	{
		/* a flush is the only way to invalidate what we cannot render */
		if (truncate || !bts[i].complete)
			ec_queue_add(w, EC_OP_FLUSH, ec_template_pattern(&bts[i]),
						 RelationGetRelid(rel), wts[i]->arg, (Datum) 0, true);
	}
	if (!truncate)
	{
		Tuplestorestate *stores[2];
		int			nstores = 0;

		if (td->tg_oldtable &&
			!(TRIGGER_FIRED_BY_UPDATE(td->tg_event) && td->tg_newtable &&
			  !update_may_change_keys(td, bts, trig->tgnargs)))
			stores[nstores++] = td->tg_oldtable;
		if (td->tg_newtable)
			stores[nstores++] = td->tg_newtable;
		capture_rows(w, rel, stores, nstores, bts, wts, trig->tgnargs);
	}
	ec_queue_close(w);

	return PointerGetDatum(NULL);
}
