/*-------------------------------------------------------------------------
 *
 * template.c
 *	  Parse key templates and turn them into Redis MATCH patterns.
 *
 * Grammar: literal text and "{column}" placeholders; "{{" and "}}" stand
 * for one literal '{' and '}' (Redis Cluster hash tags need them:
 * 'entity:{{{code}}}:meta' renders 'entity:{e1}:meta').  A single stray
 * '}' is far more likely a typo than a wish, so it is an error, reported
 * with its offset.
 *
 * A doubled brace ends the literal part just after its first brace and the
 * next literal starts after the second: parts stay (offset, len) slices of
 * the template, so whoever copies a literal part copies one brace.
 *
 *-------------------------------------------------------------------------
 */
#include "template.h"

#include <string.h>

static bool
add_part(EcTemplate *out, size_t offset, size_t len, bool is_column)
{
	if (out->nparts >= EC_TEMPLATE_MAX_PARTS)
		return false;
	out->parts[out->nparts].offset = offset;
	out->parts[out->nparts].len = len;
	out->parts[out->nparts].is_column = is_column;
	out->nparts++;
	if (is_column)
		out->ncolumns++;
	return true;
}

/*
 * The placeholder opened by the '{' at tmpl[open]: *close is set to its
 * '}'.  Returns NULL, or a message with *errpos set.
 */
static const char *
scan_placeholder(const char *tmpl, size_t len, size_t open, size_t *close,
				 size_t *errpos)
{
	size_t		j = open + 1;

	while (j < len && tmpl[j] != '}')
	{
		/* a NUL would cut the column name short where it is used */
		if (tmpl[j] == '\0')
		{
			*errpos = j;
			return "key template contains a NUL byte";
		}
		if (tmpl[j] == '{')
		{
			*errpos = j;
			return "'{' inside a placeholder";
		}
		j++;
	}
	if (j >= len)
	{
		*errpos = open;
		return "unterminated placeholder: '{' without a closing '}'";
	}
	if (j == open + 1)
	{
		*errpos = open;
		return "empty placeholder \"{}\": put a column name between the braces";
	}
	*close = j;
	return NULL;
}

const char *
ec_template_parse(const char *tmpl, size_t len, EcTemplate *out, size_t *errpos)
{
	size_t		i = 0;
	size_t		lit_start = 0;

	out->nparts = 0;
	out->ncolumns = 0;
	*errpos = 0;

	if (len == 0)
		return "key template is empty";

	while (i < len)
	{
		char		c = tmpl[i];

		if (c == '\0')
		{
			*errpos = i;
			return "key template contains a NUL byte";
		}
		if ((c == '{' || c == '}') && i + 1 < len && tmpl[i + 1] == c)
		{
			/* a literal brace: keep the first, skip the second */
			if (!add_part(out, lit_start, i + 1 - lit_start, false))
			{
				*errpos = i;
				return "key template has too many parts";
			}
			i += 2;
			lit_start = i;
			continue;
		}
		if (c == '}')
		{
			*errpos = i;
			return "'}' without a matching '{' (write '}}' for a literal '}')";
		}
		if (c == '{')
		{
			size_t		start = i + 1;
			size_t		j;
			const char *err = scan_placeholder(tmpl, len, i, &j, errpos);

			if (err)
				return err;
			if (i > lit_start && !add_part(out, lit_start, i - lit_start, false))
			{
				*errpos = i;
				return "key template has too many parts";
			}
			if (!add_part(out, start, j - start, true))
			{
				*errpos = i;
				return "key template has too many parts";
			}
			i = j + 1;
			lit_start = i;
			continue;
		}
		i++;
	}
	if (len > lit_start && !add_part(out, lit_start, len - lit_start, false))
	{
		*errpos = lit_start;
		return "key template has too many parts";
	}
	return NULL;
}

static bool
is_glob_char(char c)
{
	return c == '*' || c == '?' || c == '[' || c == ']' || c == '\\';
}

size_t
ec_glob_escape(const char *s, size_t len, char *buf)
{
	size_t		n = 0;

	for (size_t i = 0; i < len; i++)
	{
		if (is_glob_char(s[i]))
			buf[n++] = '\\';
		buf[n++] = s[i];
	}
	buf[n] = '\0';
	return n;
}

size_t
ec_template_glob_size(const EcTemplate *t)
{
	size_t		size = 1;

	for (int i = 0; i < t->nparts; i++)
		size += t->parts[i].is_column ? 1 : 2 * t->parts[i].len;
	return size;
}

size_t
ec_template_glob(const char *tmpl, const EcTemplate *t, char *buf)
{
	size_t		n = 0;

	for (int i = 0; i < t->nparts; i++)
	{
		const EcTemplatePart *p = &t->parts[i];

		/* adjacent placeholders collapse into one '*' */
		if (p->is_column)
		{
			if (n == 0 || buf[n - 1] != '*' || (n >= 2 && buf[n - 2] == '\\'))
				buf[n++] = '*';
		}
		else
			n += ec_glob_escape(tmpl + p->offset, p->len, buf + n);
	}
	buf[n] = '\0';
	return n;
}
