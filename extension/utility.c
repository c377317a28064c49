/*-------------------------------------------------------------------------
 *
 * utility.c
 *	  A ProcessUtility hook for the extension's own DDL, and the event
 *	  trigger that keeps partitions watched:
 *
 *	  - DROP EXTENSION entity_cache takes the locks it will need on the
 *		watched tables and on its own relations (the queue, the views)
 *		before anything else, all or none, so that it waits for writers
 *		instead of deadlocking with them.
 *	  - CREATE EXTENSION entity_cache in a database no worker serves warns.
 *	  - After CREATE TABLE ... PARTITION OF, ATTACH or DETACH PARTITION, the
 *		partitions of watched tables get (or lose) their capture triggers.
 *
 * Why the DROP needs help: a writer of a watched table holds the table and
 * then wants the queue (its trigger inserts there); a plain DROP takes the
 * queue (dropping it) and then wants the table (dropping its triggers).
 * Taking every lock up front in one fixed order is not enough, because a
 * writer may touch two watched tables in any order: so the DROP takes the
 * locks without waiting, and when one is busy it lets go of all the others
 * before it waits for that one.  A session that waits while holding none
 * of the others cannot be part of a deadlock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "entity_cache.h"

#include "commands/event_trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"

PG_FUNCTION_INFO_V1(entity_cache_on_ddl);

static ProcessUtility_hook_type prev_utility_hook = NULL;

/*
 * Does this statement make a table a partition or stop it being one?
 * Only those need the partitions' capture triggers brought in step.  Not
 * ALTER TABLE ... ENABLE TRIGGER: pg_restore runs one after every trigger
 * it restores, and adding the partitions' triggers then would collide with
 * the ones it restores next.
 */
static bool
changes_partitions(Node *parsetree)
{
	ListCell   *lc;

	if (IsA(parsetree, CreateStmt))
		return ((CreateStmt *) parsetree)->partbound != NULL;
	if (!IsA(parsetree, AlterTableStmt))
		return false;
	foreach(lc, ((AlterTableStmt *) parsetree)->cmds)
	{
		AlterTableCmd *cmd = lfirst(lc);

		if (cmd->subtype == AT_AttachPartition || cmd->subtype == AT_DetachPartition ||
			cmd->subtype == AT_DetachPartitionFinalize)
			return true;
	}
	return false;
}

/*
 * The event trigger entity_cache_partitions (ddl_command_end, CREATE TABLE
 * and ALTER TABLE): after PARTITION OF, ATTACH or DETACH, give every
 * partition of a watched table its capture triggers and take them from a
 * table that is no longer one (entity_cache._sync_partitions()).
 */
Datum
entity_cache_on_ddl(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("entity_cache._on_ddl() can only be called as an event trigger")));
	trigdata = (EventTriggerData *) fcinfo->context;
	if (!changes_partitions(trigdata->parsetree))
		PG_RETURN_VOID();
	SPI_connect();
	SPI_execute("SELECT entity_cache._sync_partitions()", false, 0);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * The relations DROP EXTENSION entity_cache drops from or drops: every
 * table with a capture trigger, and the extension's own relations (the
 * queue, and the views a session may have read before it writes).
 */
static List *
drop_targets(void)
{
	List	   *relids = NIL;
	Oid			queue = ec_queue_relid(true);
	MemoryContext cxt = CurrentMemoryContext;

	if (!OidIsValid(queue))
		return NIL;
	SPI_connect();
	SPI_execute("SELECT t.tgrelid FROM pg_catalog.pg_trigger t "
				"WHERE t.tgfoid = pg_catalog.to_regprocedure('entity_cache.capture()') "
				"UNION "
				"SELECT d.objid FROM pg_catalog.pg_depend d "
				"JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid "
				"WHERE e.extname = 'entity_cache' AND d.deptype = 'e' "
				"AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass "
				"AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
				"ORDER BY 1", true, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContext spicxt = MemoryContextSwitchTo(cxt);

		/* the list outlives SPI_finish() */
		relids = lappend_oid(relids, DatumGetObjectId(d));
		MemoryContextSwitchTo(spicxt);
	}
	SPI_finish();
	return relids;
}

/*
 * Lock every relation of relids with AccessExclusiveLock, all or none: on a
 * busy one, release what we hold and wait for that one alone, keep it, and
 * try the rest again.  Returns once all are held.
 */
static void
lock_all_or_wait(List *relids)
{
	Oid			waited = InvalidOid;

	for (;;)
	{
		/* the one waited for is held already, and let go of with the rest */
		List	   *held = OidIsValid(waited) ? list_make1_oid(waited) : NIL;
		Oid			busy = InvalidOid;
		ListCell   *lc;

		foreach(lc, relids)
		{
			Oid			relid = lfirst_oid(lc);

			if (relid == waited)
				continue;
			if (ConditionalLockRelationOid(relid, AccessExclusiveLock))
			{
				held = lappend_oid(held, relid);
				continue;
			}
			busy = relid;
			break;
		}
		if (!OidIsValid(busy))
			return;
		foreach(lc, held)
			UnlockRelationOid(lfirst_oid(lc), AccessExclusiveLock);
		list_free(held);

		/* a relation dropped meanwhile locks at once: nothing left to wait for */
		LockRelationOid(busy, AccessExclusiveLock);
		waited = busy;
		CHECK_FOR_INTERRUPTS();
	}
}

static bool
names_us(Node *parsetree, bool *is_drop)
{
	ListCell   *lc;

	if (IsA(parsetree, CreateExtensionStmt))
	{
		*is_drop = false;
		return strcmp(((CreateExtensionStmt *) parsetree)->extname, "entity_cache") == 0;
	}
	if (!IsA(parsetree, DropStmt) || ((DropStmt *) parsetree)->removeType != OBJECT_EXTENSION)
		return false;
	*is_drop = true;
	foreach(lc, ((DropStmt *) parsetree)->objects)
		if (strcmp(strVal(lfirst(lc)), "entity_cache") == 0)
			return true;
	return false;
}

static void
ec_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
		   ProcessUtilityContext context, ParamListInfo params,
		   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	bool		is_drop = false;
	bool		ours = names_us(pstmt->utilityStmt, &is_drop);
	const char *why;

	if (ours && is_drop)
		lock_all_or_wait(drop_targets());

	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
						  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	if (ours && !is_drop && !ec_database_served(&why))
		ereport(WARNING,
				(errmsg("entity_cache: %s", why),
				 errdetail("Changes in this database are queued, but nothing applies them to Redis."),
				 errhint("Set entity_cache.database to this database's name (it needs a restart), "
						 "or create the extension in database \"%s\".", ec_database)));
}

void
ec_utility_init(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = ec_utility;
}
