/*-------------------------------------------------------------------------
 *
 * redis_url.c
 *	  Parse entity_cache.redis_url into hosts and ports (Redis nodes or
 *	  sentinels) or a socket path, TLS or not, ACL user, password, master
 *	  name and database number.
 *
 * Every rejection names the part that is wrong, because the message ends
 * up in front of an operator who typed the URL into postgresql.conf.
 *
 *-------------------------------------------------------------------------
 */
#include "redis_url.h"

#include <string.h>

#define MAX_DB 1000000

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode s[0..len) into dst (size dstsize).  False if malformed. */
static bool
pct_decode(const char *s, size_t len, char *dst, size_t dstsize)
{
	size_t		n = 0;

	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (c == '%')
		{
			int			hi,
						lo;

			if (i + 2 >= len)
				return false;
			hi = hexval(s[i + 1]);
			lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return false;
			c = (char) (hi * 16 + lo);
			i += 2;
		}
		if (n + 1 >= dstsize)
			return false;
		dst[n++] = c;
	}
	dst[n] = '\0';
	return true;
}

/* Parse a decimal number of s[0..len) in [min, max]; false otherwise. */
static bool
parse_int(const char *s, size_t len, long min, long max, int *out)
{
	long		v = 0;

	if (len == 0 || len > 10)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	if (v < min || v > max)
		return false;
	*out = (int) v;
	return true;
}

static const char *
parse_unix(const char *rest, RedisUrl *out)
{
	const char *q = strchr(rest, '?');
	size_t		pathlen = q ? (size_t) (q - rest) : strlen(rest);

	if (pathlen == 0 || rest[0] != '/')
		return "a unix:// URL needs an absolute socket path, as in unix:///run/redis/redis.sock";
	if (pathlen >= EC_URL_PATH_MAX)
		return "the socket path is too long";
	memcpy(out->path, rest, pathlen);
	out->path[pathlen] = '\0';
	if (q)
	{
		if (strncmp(q + 1, "db=", 3) != 0)
			return "the only query parameter of a unix:// URL is db=N";
		if (!parse_int(q + 4, strlen(q + 4), 0, MAX_DB, &out->db))
			return "db must be a whole number from 0 to 1000000";
	}
	return NULL;
}

/* One host[:port] or [v6addr][:port] of s[0..len) into h. */
static const char *
parse_host(const char *s, size_t len, int default_port, RedisUrlHost *h)
{
	const char *end = s + len;
	const char *hostend;
	const char *portstr = NULL;

	h->port = default_port;
	if (len > 0 && *s == '[')
	{
		const char *close = memchr(s, ']', len);

		if (!close)
			return "an IPv6 address must be closed with ']'";
		if (close == s + 1)
			return "the host is empty";
		if ((size_t) (close - s - 1) >= EC_URL_HOST_MAX)
			return "the host name is too long";
		memcpy(h->host, s + 1, close - s - 1);
		h->host[close - s - 1] = '\0';
		hostend = close + 1;
		if (hostend < end)
		{
			if (*hostend != ':')
				return "unexpected text after the IPv6 address";
			portstr = hostend + 1;
		}
	}
	else
	{
		const char *colon = memchr(s, ':', len);

		hostend = colon ? colon : end;
		if (hostend == s)
			return "the host is empty, as in redis://127.0.0.1:6379/0";
		if ((size_t) (hostend - s) >= EC_URL_HOST_MAX)
			return "the host name is too long";
		for (const char *p = s; p < hostend; p++)
			if (*p == '@' || *p == '[' || *p == ']' || *p == '?' || *p == '#' ||
				*p == ' ' || (unsigned char) *p < 0x20)
				return "the host contains a character that is not allowed";
		memcpy(h->host, s, hostend - s);
		h->host[hostend - s] = '\0';
		if (colon)
			portstr = colon + 1;
	}
	if (portstr && !parse_int(portstr, end - portstr, 1, 65535, &h->port))
		return "the port must be a whole number from 1 to 65535";
	return NULL;
}

/* host[:port][,host[:port]...] of s[0..len) into out->hosts. */
static const char *
parse_hosts(const char *s, size_t len, int default_port, RedisUrl *out)
{
	const char *end = s + len;

	for (;;)
	{
		const char *comma = memchr(s, ',', end - s);
		const char *itemend = comma ? comma : end;
		const char *err;

		/* a comma inside brackets cannot occur: IPv6 has none */
		if (out->nhosts == EC_URL_MAX_HOSTS)
			return "too many hosts (at most 16)";
		err = parse_host(s, itemend - s, default_port, &out->hosts[out->nhosts]);
		if (err)
			return err;
		out->nhosts++;
		if (!comma)
			return NULL;
		s = comma + 1;
	}
}

/* [user][:password] of s[0..len), at offset off of the URL text */
static const char *
parse_userinfo(const char *s, size_t len, size_t off, RedisUrl *out)
{
	const char *colon = memchr(s, ':', len);
	size_t		userlen = colon ? (size_t) (colon - s) : len;

	if (!pct_decode(s, userlen, out->user, sizeof(out->user)))
		return "the user name is malformed or too long (percent-encode special characters)";
	if (colon)
	{
		if (!pct_decode(colon + 1, s + len - colon - 1, out->password, sizeof(out->password)))
			return "the password is malformed or too long (percent-encode special characters)";
		out->password_off = off + (colon + 1 - s);
		out->password_len = s + len - colon - 1;
	}
	return NULL;
}

/* The query of a sentinel URL: master=NAME, required. */
static const char *
parse_sentinel_query(const char *q, RedisUrl *out)
{
	if (q == NULL || strncmp(q, "?master=", 8) != 0)
		return "a sentinel URL needs the master's name, as in redis-sentinel://127.0.0.1:26379/0?master=mymaster";
	if (strchr(q + 8, '&'))
		return "the only query parameter of a sentinel URL is master=NAME";
	if (q[8] == '\0' ||
		!pct_decode(q + 8, strlen(q + 8), out->master, sizeof(out->master)))
		return "the master name is empty, malformed or too long";
	return NULL;
}

/* Everything after "scheme://" of a TCP URL, at offset off of the text. */
static const char *
parse_tcp(const char *rest, size_t off, RedisUrl *out)
{
	const char *end = rest + strlen(rest);
	const char *slash = strchr(rest, '/');
	const char *at = NULL;
	const char *host;
	const char *query;
	const char *authority_end;
	const char *err;

	/* the last '@' before the path ends the userinfo: passwords may hold '@' */
	for (const char *p = rest; p < (slash ? slash : end); p++)
		if (*p == '@')
			at = p;
	if (at && (err = parse_userinfo(rest, at - rest, off, out)) != NULL)
		return err;
	host = at ? at + 1 : rest;

	query = strchr(host, '?');
	if (query && !out->sentinel)
		return "a redis:// URL takes no query parameters (the database goes after '/')";
	if (out->sentinel && (err = parse_sentinel_query(query, out)) != NULL)
		return err;
	if (query)
		end = query;
	slash = memchr(host, '/', end - host);
	authority_end = slash ? slash : end;

	err = parse_hosts(host, authority_end - host, out->sentinel ? 26379 : 6379, out);
	if (err)
		return err;
	if (slash && slash + 1 < end &&
		!parse_int(slash + 1, end - slash - 1, 0, MAX_DB, &out->db))
		return "the database after '/' must be a whole number from 0 to 1000000";
	return NULL;
}

static const struct
{
	const char *prefix;
	bool		tls;
	bool		sentinel;
}			schemes[] = {
	{"redis://", false, false},
	{"rediss://", true, false},
	{"redis-sentinel://", false, true},
	{"rediss-sentinel://", true, true},
};

const char *
redis_url_parse(const char *url, RedisUrl *out)
{
	memset(out, 0, sizeof(*out));

	if (url == NULL || url[0] == '\0')
		return "the URL is empty";
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
	{
		size_t		len = strlen(schemes[i].prefix);

		if (strncmp(url, schemes[i].prefix, len) == 0)
		{
			out->tls = schemes[i].tls;
			out->sentinel = schemes[i].sentinel;
			return parse_tcp(url + len, len, out);
		}
	}
	if (strncmp(url, "unix://", 7) == 0)
	{
		out->is_unix = true;
		return parse_unix(url + 7, out);
	}
	return "the URL must start with redis://, rediss://, redis-sentinel://, rediss-sentinel:// or unix://";
}
