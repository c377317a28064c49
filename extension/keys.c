/*-------------------------------------------------------------------------
 *
 * keys.c
 *	  Key templates bound to a relation: validation messages, rendering a
 *	  row into a key, and the flush pattern of a template.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "keys.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "pgtime.h"
#include "executor/spi.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/bytea.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/typcache.h"

/*
 * The settings under which a placeholder renders, whatever the writer's
 * session: the README lists them, and applications build the same keys.
 */
/*
 * Zones that are UTC under another name (initdb on a UTC machine picks
 * Etc/UTC): ISO output prints only the numeric offset, always +00 here.
 */
static bool type_needs_canonical(Oid typid);

static bool
timezone_is_utc(void)
{
	static const char *const utc_names[] = {"UTC", "Etc/UTC", "GMT", "Etc/GMT"};
	const char *name = session_timezone ? pg_get_timezone_name(session_timezone) : NULL;

	for (int i = 0; name && i < lengthof(utc_names); i++)
		if (strcmp(name, utc_names[i]) == 0)
			return true;
	return false;
}

static bool
datestyle_is_iso(void)
{
	/* the field order matters for input only; output in ISO ignores it */
	return DateStyle == USE_ISO_DATES;
}

static bool
intervalstyle_is_postgres(void)
{
	return IntervalStyle == INTSTYLE_POSTGRES;
}

static bool
float_digits_are_1(void)
{
	return extra_float_digits == 1;
}

static bool
bytea_is_hex(void)
{
	return bytea_output == BYTEA_OUTPUT_HEX;
}

static const struct
{
	const char *name;
	const char *value;
	bool		(*already) (void);	/* is the session's value the same? */
}			canonical_settings[] = {
	{"DateStyle", "ISO, MDY", datestyle_is_iso},
	{"TimeZone", "UTC", timezone_is_utc},
	{"IntervalStyle", "postgres", intervalstyle_is_postgres},
	{"extra_float_digits", "1", float_digits_are_1},
	{"bytea_output", "hex", bytea_is_hex},
};

/* Parse or raise an error that quotes the template and points at the fault. */
void
ec_template_parse_or_raise(const char *text, EcTemplate *out)
{
	size_t		errpos;
	const char *err = ec_template_parse(text, strlen(text), out, &errpos);

	if (err)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid key template \"%s\": %s", text, err),
				 text[0] ? errdetail("The problem is at byte %zu.", errpos + 1) : 0,
				 errhint("A template is literal text with {column} placeholders, as in 'entity:metadata:{code}'.")));
}

/*
 * Parse text and resolve its placeholders against desc.  A placeholder that
 * names no live column leaves bt->complete false and bt->missing set: the
 * caller decides whether that is an error (watch) or a reason to flush the
 * whole pattern (a column renamed after watch).
 */
void
ec_bind_template(EcBoundTemplate *bt, const char *text, TupleDesc desc)
{
	bt->text = text;
	bt->complete = true;
	bt->canonical = false;
	bt->missing = NULL;
	ec_template_parse_or_raise(text, &bt->parsed);

	for (int i = 0; i < bt->parsed.nparts; i++)
	{
		EcTemplatePart *p = &bt->parsed.parts[i];

		bt->attnums[i] = 0;
		if (!p->is_column)
			continue;
		for (int a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);

			if (att->attisdropped)
				continue;
			if (strlen(NameStr(att->attname)) == p->len &&
				memcmp(NameStr(att->attname), text + p->offset, p->len) == 0)
			{
				bt->attnums[i] = att->attnum;
				if (!bt->canonical && type_needs_canonical(att->atttypid))
					bt->canonical = true;
				break;
			}
		}
		if (bt->attnums[i] == 0 && bt->complete)
		{
			bt->complete = false;
			bt->missing = pnstrdup(text + p->offset, p->len);
		}
	}
}

/* The SCAN MATCH pattern that covers every key of the template. */
char *
ec_template_pattern(const EcBoundTemplate *bt)
{
	char	   *buf = palloc(ec_template_glob_size(&bt->parsed));

	ec_template_glob(bt->text, &bt->parsed, buf);
	return buf;
}

/*
 * Render the key of one row into key.  If vals is not NULL, *vals becomes a
 * text[] of the placeholder values (in template order), which the worker
 * uses to find the row again in refresh mode.  Returns false when a
 * placeholder is NULL: no application can have cached a row under a key
 * built from a NULL.
 */
bool
ec_render_key(const EcBoundTemplate *bt, EcValueFn fn, void *arg,
			  StringInfo key, Datum *vals)
{
	Datum		elems[EC_TEMPLATE_MAX_PARTS];
	int			nelems = 0;

	resetStringInfo(key);
	for (int i = 0; i < bt->parsed.nparts; i++)
	{
		const EcTemplatePart *p = &bt->parsed.parts[i];
		const char *v;

		if (!p->is_column)
		{
			appendBinaryStringInfo(key, bt->text + p->offset, p->len);
			continue;
		}
		v = fn(arg, bt->attnums[i]);
		if (v == NULL)
			return false;
		appendStringInfoString(key, v);
		if (vals)
			elems[nelems++] = CStringGetTextDatum(v);
	}
	if (vals)
		*vals = PointerGetDatum(construct_array(elems, nelems, TEXTOID, -1, false,
												TYPALIGN_INT));
	return true;
}

void
ec_row_values_init(EcRowValues *rv, TupleDesc desc)
{
	rv->desc = desc;
	rv->slot = NULL;
	rv->tuple = NULL;
	rv->outfuncs = palloc0(sizeof(FmgrInfo) * desc->natts);
	rv->fn_cxt = CurrentMemoryContext;
}

const char *
ec_row_value(void *arg, AttrNumber attnum)
{
	EcRowValues *rv = arg;
	FmgrInfo   *f = &rv->outfuncs[attnum - 1];
	bool		isnull;
	Datum		d;

	if (rv->slot)
		d = slot_getattr(rv->slot, attnum, &isnull);
	else
		d = heap_getattr(rv->tuple, attnum, rv->desc, &isnull);
	if (isnull)
		return NULL;
	if (f->fn_oid == InvalidOid)
	{
		Oid			typoutput;
		bool		typisvarlena;

		getTypeOutputInfo(TupleDescAttr(rv->desc, attnum - 1)->atttypid,
						  &typoutput, &typisvarlena);
		fmgr_info_cxt(typoutput, f, rv->fn_cxt);
	}
	return OutputFunctionCall(f, d);
}

/*
 * Is this the capture trigger that carries a relation's templates?  Its
 * name and its function both say so: a user trigger that happens to be
 * called entity_cache_insert is not ours.
 */
bool
ec_is_capture_trigger(const char *tgname, Oid tgfoid)
{
	char	   *fname;
	Oid			nsp;

	if (strcmp(tgname, EC_TRIGGER_INSERT) != 0)
		return false;
	fname = get_func_name(tgfoid);
	if (fname == NULL || strcmp(fname, "capture") != 0)
		return false;
	nsp = get_func_namespace(tgfoid);
	return OidIsValid(nsp) && get_namespace_oid(EC_SCHEMA, true) == nsp;
}

/* Split one trigger argument into its template and value function. */
EcWatched *
ec_split_watch_arg(const char *arg)
{
	EcWatched  *w = palloc0(sizeof(EcWatched));
	const char *nl = strstr(arg, EC_VALUE_PREFIX);

	w->arg = pstrdup(arg);
	if (nl == NULL)
	{
		w->template = pstrdup(arg);
		return w;
	}
	w->template = pnstrdup(arg, nl - arg);
	w->value = pstrdup(nl + strlen(EC_VALUE_PREFIX));
	if (w->value[0] == '\0')
		w->value = NULL;
	return w;
}

/*
 * The templates a relation is watched with (a List of EcWatched): the
 * arguments of its capture insert trigger, which watch() keeps in step
 * with the other three.  The triggers are the configuration, so pg_dump
 * carries it.  The entity_cache.watched view reads the same triggers
 * through entity_cache_watched_args(), with the same two functions above.
 */
List *
ec_watched_templates(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;
	List	   *result = NIL;

	if (td == NULL)
		return NIL;
	for (int i = 0; i < td->numtriggers; i++)
	{
		Trigger    *t = &td->triggers[i];

		if (!ec_is_capture_trigger(t->tgname, t->tgfoid))
			continue;
		for (int j = 0; j < t->tgnargs; j++)
			result = lappend(result, ec_split_watch_arg(t->tgargs[j]));
	}
	return result;
}

/* built-in types whose text no setting changes */
static bool
text_is_setting_free(Oid typid)
{
	switch (typid)
	{
		case BOOLOID:
		case CHAROID:
		case NAMEOID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NUMERICOID:
		case UUIDOID:
		case INETOID:
		case CIDROID:
		case MACADDROID:
		case MACADDR8OID:
		case JSONOID:
		case JSONBOID:
		case BITOID:
		case VARBITOID:
			return true;
		default:
			return false;
	}
}

/*
 * Does the text of a value of this type depend on DateStyle, TimeZone,
 * IntervalStyle, extra_float_digits or bytea_output?  Types known not to
 * (integers, text, numeric, uuid, ...) answer false; every other base type
 * (dates and times, floats, bytea, geometric types, types of other
 * extensions) true, to be safe; arrays, domains, ranges and composites ask
 * of what they are made of.  Called once per template and statement, so a
 * template over text or integer columns costs no setting changes per row;
 * those answer before any catalog lookup.
 */
static bool
type_needs_canonical(Oid typid)
{
	TypeCacheEntry *tc;
	Oid			base;
	Oid			elem;

	check_stack_depth();
	if (text_is_setting_free(typid))
		return false;
	base = getBaseType(typid);
	if (base != typid)
		return type_needs_canonical(base);
	elem = get_element_type(typid);
	if (OidIsValid(elem))
		return type_needs_canonical(elem);
	switch (get_typtype(typid))
	{
		case TYPTYPE_ENUM:
			return false;
		case TYPTYPE_RANGE:
			return type_needs_canonical(get_range_subtype(typid));
		case TYPTYPE_MULTIRANGE:
			return type_needs_canonical(get_range_subtype(get_multirange_range(typid)));
		case TYPTYPE_COMPOSITE:
			tc = lookup_type_cache(typid, TYPECACHE_TUPDESC);
			for (int a = 0; tc->tupDesc && a < tc->tupDesc->natts; a++)
			{
				Form_pg_attribute att = TupleDescAttr(tc->tupDesc, a);

				if (!att->attisdropped && type_needs_canonical(att->atttypid))
					return true;
			}
			return false;
		default:
			return true;
	}
}

/*
 * Switch to the canonical settings until ec_canonical_end(): for the
 * current (sub)transaction only, and an error in between restores the
 * writer's settings as any aborted SET LOCAL would be.  Only the settings
 * the session does not have already are switched (each switch, and its
 * undoing, runs the setting's check and assign hooks): a session that
 * already runs with them, a UTC server's default, pays nothing.  Returns 0
 * when nothing was switched.
 */
int
ec_canonical_begin(void)
{
	int			nest = 0;

	for (int i = 0; i < lengthof(canonical_settings); i++)
	{
		if (canonical_settings[i].already())
			continue;
		if (nest == 0)
			nest = NewGUCNestLevel();
		(void) set_config_option(canonical_settings[i].name, canonical_settings[i].value,
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	}
	return nest;
}

/*
 * Begin rendering the keys of these bound templates: the canonical
 * settings if any renderable one has a column whose text depends on them
 * (decided once per template, so a template over text or integer columns
 * costs nothing per row).  End with ec_canonical_end().
 */
int
ec_render_begin(const EcBoundTemplate *bts, int n)
{
	for (int i = 0; i < n; i++)
		if (bts[i].complete && bts[i].canonical)
			return ec_canonical_begin();
	return 0;
}

void
ec_canonical_end(int nest)
{
	if (nest != 0)
		AtEOXact_GUC(true, nest);
}

/*
 * For the worker: the canonical settings for the whole process, so that
 * the values it parses back (refresh lookups) read as they were written.
 */
void
ec_canonical_settings(void)
{
	for (int i = 0; i < lengthof(canonical_settings); i++)
		SetConfigOption(canonical_settings[i].name, canonical_settings[i].value,
						PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * The function a stored signature names, or InvalidOid if it no longer
 * exists (dropped after watch(): callers then fall back to deleting).
 */
static Oid
value_fn_oid(const char *value)
{
	LOCAL_FCINFO(fcinfo, 1);
	Datum		result;

	/* to_regprocedure() returns NULL, not an error, for a missing function */
	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = CStringGetTextDatum(value);
	fcinfo->args[0].isnull = false;
	result = to_regprocedure(fcinfo);
	return fcinfo->isnull ? InvalidOid : DatumGetObjectId(result);
}

/*
 * The SQL expression that gives the cached text of row alias: the value
 * function's result as text, row_to_json by default.  NULL if the value
 * function is gone.
 */
char *
ec_value_sql(const char *value, const char *alias)
{
	Oid			fn;

	if (value == NULL)
		return psprintf("pg_catalog.row_to_json(%s)::text", alias);
	fn = value_fn_oid(value);
	if (!OidIsValid(fn))
		return NULL;
	return psprintf("%s(%s)::text",
					quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)),
											   get_func_name(fn)),
					alias);
}

/*
 * Check that fnoid can be a value function for relid: one argument of the
 * table's row type, returning json, jsonb or text, one row.  Returns the
 * signature to store.
 */
char *
ec_check_value_fn(Oid relid, Oid fnoid)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fnoid));
	Form_pg_proc proc;
	Oid			rowtype = get_rel_type_id(relid);
	char	   *sig;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("value function with OID %u does not exist", fnoid)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	sig = format_procedure_qualified(fnoid);
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("value function %s must be a plain function returning one value", sig)));
	if (proc->pronargs != 1 || proc->proargtypes.values[0] != rowtype)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("value function %s must take exactly one argument of type %s",
						sig, format_type_be(rowtype)),
				 errhint("Declare it as CREATE FUNCTION f(r %s) RETURNS jsonb ...",
						 format_type_be(rowtype))));
	if (proc->prorettype != JSONOID && proc->prorettype != JSONBOID &&
		proc->prorettype != TEXTOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("value function %s must return json, jsonb or text, not %s",
						sig, format_type_be(proc->prorettype))));
	ReleaseSysCache(tup);
	return sig;
}
