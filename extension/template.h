/*-------------------------------------------------------------------------
 *
 * template.h
 *	  Key templates: "entity:metadata:{code}" split into literal text and
 *	  column placeholders.
 *
 * The parser is plain C with no PostgreSQL dependency and no allocation so
 * that the same code runs in backends, in the worker and under a fuzzer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_TEMPLATE_H
#define EC_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#define EC_TEMPLATE_MAX_PARTS 64

/*
 * A literal part is a slice of the template copied as it is; a literal
 * brace ("{{" or "}}") is the last byte of its part, and the second brace
 * of the pair is skipped (it belongs to no part).
 */
typedef struct EcTemplatePart
{
	size_t		offset;			/* into the template text */
	size_t		len;
	bool		is_column;		/* placeholder: text is the column name */
} EcTemplatePart;

typedef struct EcTemplate
{
	int			nparts;
	int			ncolumns;
	EcTemplatePart parts[EC_TEMPLATE_MAX_PARTS];
} EcTemplate;

/*
 * Parse "tmpl" (len bytes, need not be NUL-terminated).  Returns NULL on
 * success, otherwise a static message; *errpos is the byte offset of the
 * problem.
 */
extern const char *ec_template_parse(const char *tmpl, size_t len,
									 EcTemplate *out, size_t *errpos);

/*
 * Size of the buffer ec_template_glob() needs, including the NUL.
 */
extern size_t ec_template_glob_size(const EcTemplate *t);

/*
 * Write the Redis SCAN MATCH pattern of the template into buf: literal text
 * with the glob characters * ? [ ] \ escaped, each placeholder as '*'.
 * Returns the length written (without the NUL).
 */
extern size_t ec_template_glob(const char *tmpl, const EcTemplate *t,
							   char *buf);

/* Escape one literal string for MATCH; buf needs 2 * len + 1 bytes. */
extern size_t ec_glob_escape(const char *s, size_t len, char *buf);

#endif							/* EC_TEMPLATE_H */
