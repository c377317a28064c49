/*-------------------------------------------------------------------------
 *
 * fuzz_template.c
 *	  libFuzzer target for ec_template_parse() and ec_template_glob().
 *
 * Key templates come from entity_cache.watch() and are parsed again by the
 * worker for every flush, so this target checks both halves: the parse
 * describes the input exactly (parts in order, no overlap, every byte
 * accounted for: the only gap is the second brace of a literal "{{" or
 * "}}"), and the MATCH pattern fits in exactly
 * ec_template_glob_size() bytes -- the buffer is allocated at that size so
 * ASan flags a one-byte overflow -- with every glob character escaped
 * except the '*' that stands for a placeholder.
 *
 * Built and run by scripts/fuzz.
 *
 *-------------------------------------------------------------------------
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"
#include "fuzz_check.h"


static bool
glob_char(char c)
{
	return c == '*' || c == '?' || c == '[' || c == ']' || c == '\\';
}

/*
 * Check the parts against the input: they must tile it from the first to
 * the last byte, each column part sitting between its own '{' and '}', and
 * the only bytes left out being the second brace of each "{{" or "}}".
 */
static void
check_parts(const char *tmpl, size_t len, const EcTemplate *t)
{
	size_t		pos = 0;
	int			ncolumns = 0;

	CHECK(t->nparts >= 1 && t->nparts <= EC_TEMPLATE_MAX_PARTS);

	for (int i = 0; i < t->nparts; i++)
	{
		const EcTemplatePart *p = &t->parts[i];
		size_t		end;

		CHECK(p->len > 0);
		if (p->is_column)
		{
			ncolumns++;
			CHECK(pos < len && tmpl[pos] == '{');
			CHECK(p->offset == pos + 1);
			CHECK(p->offset + p->len < len);
			CHECK(tmpl[p->offset + p->len] == '}');
			pos = p->offset + p->len + 1;
			/* a column name holds no brace and no NUL */
			for (size_t k = p->offset; k < p->offset + p->len; k++)
				CHECK(tmpl[k] != '{' && tmpl[k] != '}' && tmpl[k] != '\0');
			continue;
		}

		CHECK(p->offset == pos);
		end = p->offset + p->len;
		CHECK(end <= len);
		pos = end;
		/* a literal brace ends its part and its twin follows, skipped */
		if (tmpl[end - 1] == '{' || tmpl[end - 1] == '}')
		{
			CHECK(end < len && tmpl[end] == tmpl[end - 1]);
			pos = end + 1;
		}
		else
			/* two literals in a row only after a literal brace */
			CHECK(i == 0 || t->parts[i - 1].is_column ||
				  tmpl[t->parts[i - 1].offset + t->parts[i - 1].len - 1] == '{' ||
				  tmpl[t->parts[i - 1].offset + t->parts[i - 1].len - 1] == '}');
		/* no other brace, no NUL (column names are used as C strings) */
		for (size_t k = p->offset; k + 1 < end; k++)
			CHECK(tmpl[k] != '{' && tmpl[k] != '}' && tmpl[k] != '\0');
		CHECK(tmpl[end - 1] != '\0');
	}
	CHECK(pos == len);
	CHECK(ncolumns == t->ncolumns);
}

/*
 * Check the MATCH pattern by walking it alongside the parts: each literal
 * byte appears as itself, preceded by '\' if it is a glob character; each
 * run of adjacent placeholders appears as one or more unescaped '*' (the
 * glob collapses them, but an extra '*' matches the same keys, so only
 * "at least one, at most one per placeholder" is required).
 */
static void
check_glob(const char *tmpl, const EcTemplate *t, const char *glob, size_t n)
{
	size_t		j = 0;
	int			i = 0;

	while (i < t->nparts)
	{
		const EcTemplatePart *p = &t->parts[i];

		if (p->is_column)
		{
			int			run = 0;
			int			stars = 0;

			while (i < t->nparts && t->parts[i].is_column)
			{
				run++;
				i++;
			}
			while (j < n && glob[j] == '*')
			{
				stars++;
				j++;
			}
			CHECK(stars >= 1 && stars <= run);
			continue;
		}

		for (size_t k = p->offset; k < p->offset + p->len; k++)
		{
			if (glob_char(tmpl[k]))
			{
				CHECK(j < n && glob[j] == '\\');
				j++;
			}
			CHECK(j < n && glob[j] == tmpl[k]);
			j++;
		}
		i++;
	}
	CHECK(j == n);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *tmpl = (const char *) data;
	EcTemplate	t;
	size_t		errpos = (size_t) -1;
	const char *err;
	size_t		gsize;
	size_t		n;
	char	   *glob;

	/*
	 * The parser takes a length and must not need a terminator; libFuzzer's
	 * buffer is an exact-size heap block, so any read past it is caught.
	 */
	err = ec_template_parse(tmpl, size, &t, &errpos);
	if (err != NULL)
	{
		CHECK(err[0] != '\0');
		/* the offset is quoted back to the user: it must point into the text */
		CHECK(size == 0 ? errpos == 0 : errpos < size);
		return 0;
	}

	check_parts(tmpl, size, &t);

	gsize = ec_template_glob_size(&t);
	CHECK(gsize >= 1);
	glob = malloc(gsize);
	if (glob == NULL)
		return 0;
	n = ec_template_glob(tmpl, &t, glob);
	CHECK(n < gsize);
	CHECK(glob[n] == '\0');
	CHECK(strlen(glob) == n);
	check_glob(tmpl, &t, glob, n);

	free(glob);
	return 0;
}
