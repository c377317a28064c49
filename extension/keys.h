/*-------------------------------------------------------------------------
 *
 * keys.h
 *	  Turn a key template and a row into a Redis key.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_KEYS_H
#define EC_KEYS_H

#include "entity_cache.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "utils/relcache.h"
#include "lib/stringinfo.h"
#include "template.h"

/* a template bound to the columns of one relation */
typedef struct EcBoundTemplate
{
	const char *text;
	EcTemplate	parsed;
	AttrNumber	attnums[EC_TEMPLATE_MAX_PARTS]; /* per part; 0 for literals */
	bool		complete;		/* every placeholder names a live column */
	bool		canonical;		/* a column's text depends on session settings */
	char	   *missing;		/* first column that does not, if any */
} EcBoundTemplate;

/* returns the text of column attnum, or NULL for SQL NULL */
typedef const char *(*EcValueFn) (void *arg, AttrNumber attnum);

extern void ec_template_parse_or_raise(const char *text, EcTemplate *out);
extern void ec_bind_template(EcBoundTemplate *bt, const char *text, TupleDesc desc);
extern char *ec_template_pattern(const EcBoundTemplate *bt);
extern bool ec_render_key(const EcBoundTemplate *bt, EcValueFn fn, void *arg,
						  StringInfo key, Datum *vals);

/*
 * One watched template as a capture trigger argument carries it:
 * "<template>" or "<template>\nvalue=<schema.fn(argtype)>".  A template
 * cannot contain a line break (watch() refuses one), and the value function
 * is kept as its qualified signature, not an OID, so that pg_dump and
 * pg_restore carry it.
 */
typedef struct EcWatched
{
	char	   *arg;			/* the trigger argument as stored */
	char	   *template;
	char	   *value;			/* signature, or NULL for row_to_json */
} EcWatched;

#define EC_VALUE_PREFIX "\nvalue="

extern bool ec_is_capture_trigger(const char *tgname, Oid tgfoid);
extern EcWatched *ec_split_watch_arg(const char *arg);
extern List *ec_watched_templates(Relation rel);
extern int	ec_canonical_begin(void);
extern int	ec_render_begin(const EcBoundTemplate *bts, int n);
extern void ec_canonical_end(int nest);
extern void ec_canonical_settings(void);

/*
 * The EcValueFn of every row reader (capture trigger, invalidate(), warm(),
 * verify()): the current row is a slot or, when slot is NULL, a heap tuple
 * of desc.  Each column's output function is looked up once, in the context
 * that was current at ec_row_values_init(): some output functions (arrays,
 * ranges, records) cache their own state there, so it must outlive the
 * per-row contexts the readers reset.
 */
typedef struct EcRowValues
{
	TupleDesc	desc;
	TupleTableSlot *slot;
	HeapTuple	tuple;
	FmgrInfo   *outfuncs;		/* per attribute, fn_oid 0 until first use */
	MemoryContext fn_cxt;
} EcRowValues;
extern void ec_row_values_init(EcRowValues *rv, TupleDesc desc);
extern const char *ec_row_value(void *arg, AttrNumber attnum);
extern char *ec_value_sql(const char *value, const char *alias);
extern char *ec_check_value_fn(Oid relid, Oid fnoid);

#define EC_TRIGGER_INSERT "entity_cache_insert"

#endif							/* EC_KEYS_H */
