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

#include "access/tupdesc.h"
#include "utils/relcache.h"
#include "lib/stringinfo.h"
#include "template.h"

/* a template bound to the columns of one relation */
typedef struct EcBoundTemplate
{
	const char *text;
	EcTemplate	parsed;
	AttrNumber	attnums[EC_TEMPLATE_MAX_PARTS]; /* per part; 0 for literals */
	Oid			atttypes[EC_TEMPLATE_MAX_PARTS];	/* per part; 0 for literals */
	int32		atttypmods[EC_TEMPLATE_MAX_PARTS];
	bool		complete;		/* every placeholder names a live column */
	bool		canonical;		/* a column's text depends on session settings */
	char	   *missing;		/* first column that does not, if any */
} EcBoundTemplate;

/* returns the text of column attnum, or NULL for SQL NULL */
typedef const char *(*EcValueFn) (void *arg, AttrNumber attnum);

extern void ec_parse_template(const char *text, EcTemplate *out);
extern void ec_bind_template(EcBoundTemplate *bt, const char *text, TupleDesc desc);
extern char *ec_template_pattern(const EcBoundTemplate *bt);
extern bool ec_render_key(const EcBoundTemplate *bt, EcValueFn fn, void *arg,
						  StringInfo key, Datum *vals);
extern List *ec_watched_templates(Relation rel);
extern bool ec_type_needs_canonical(Oid typid);
extern int	ec_canonical_begin(void);
extern void ec_canonical_end(int nest);
extern void ec_canonical_settings(void);

#define EC_TRIGGER_INSERT "entity_cache_insert"

#endif							/* EC_KEYS_H */
