/*-------------------------------------------------------------------------
 *
 * redis_url.c
 *	  Parse entity_cache.redis_url into host/port or socket path, ACL user,
 *	  password and database number.
 *
 * Every rejection names the part that is wrong, because the message ends
 * up in front of an operator who typed the URL into postgresql.conf.
 *
 *-------------------------------------------------------------------------
 */
#include "redis_url.h"

#include <string.h>

#define DEFAULT_PORT 6379
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

static const char *
parse_tcp(const char *rest, RedisUrl *out)
{
	const char *end = rest + strlen(rest);
	const char *slash = strchr(rest, '/');
	const char *authority_end = slash ? slash : end;
	const char *at = NULL;
	const char *host;
	const char *hostend;
	const char *portstr = NULL;

	/* the last '@' before the path ends the userinfo: passwords may hold '@' */
	for (const char *p = rest; p < authority_end; p++)
		if (*p == '@')
			at = p;

	if (at)
	{
		const char *colon = memchr(rest, ':', at - rest);
		size_t		userlen = colon ? (size_t) (colon - rest) : (size_t) (at - rest);

		if (!pct_decode(rest, userlen, out->user, sizeof(out->user)))
			return "the user name is malformed or too long (percent-encode special characters)";
		if (colon &&
			!pct_decode(colon + 1, at - colon - 1, out->password, sizeof(out->password)))
			return "the password is malformed or too long (percent-encode special characters)";
		host = at + 1;
	}
	else
		host = rest;

	if (host < authority_end && *host == '[')
	{
		const char *close = memchr(host, ']', authority_end - host);

		if (!close)
			return "an IPv6 address must be closed with ']'";
		if (close == host + 1)
			return "the host is empty";
		if ((size_t) (close - host - 1) >= EC_URL_HOST_MAX)
			return "the host name is too long";
		memcpy(out->host, host + 1, close - host - 1);
		out->host[close - host - 1] = '\0';
		hostend = close + 1;
		if (hostend < authority_end)
		{
			if (*hostend != ':')
				return "unexpected text after the IPv6 address";
			portstr = hostend + 1;
		}
	}
	else
	{
		const char *colon = memchr(host, ':', authority_end - host);

		hostend = colon ? colon : authority_end;
		if (hostend == host)
			return "the host is empty, as in redis://127.0.0.1:6379/0";
		if ((size_t) (hostend - host) >= EC_URL_HOST_MAX)
			return "the host name is too long";
		for (const char *p = host; p < hostend; p++)
			if (*p == '@' || *p == '[' || *p == ']' || *p == '?' || *p == '#' ||
				*p == ' ' || (unsigned char) *p < 0x20)
				return "the host contains a character that is not allowed";
		memcpy(out->host, host, hostend - host);
		out->host[hostend - host] = '\0';
		if (colon)
			portstr = colon + 1;
	}

	if (portstr &&
		!parse_int(portstr, authority_end - portstr, 1, 65535, &out->port))
		return "the port must be a whole number from 1 to 65535";

	if (slash && slash[1] != '\0')
	{
		if (!parse_int(slash + 1, end - slash - 1, 0, MAX_DB, &out->db))
			return "the database after '/' must be a whole number from 0 to 1000000";
	}
	return NULL;
}

const char *
redis_url_parse(const char *url, RedisUrl *out)
{
	memset(out, 0, sizeof(*out));
	out->port = DEFAULT_PORT;

	if (url == NULL || url[0] == '\0')
		return "the URL is empty";
	if (strncmp(url, "redis://", 8) == 0)
		return parse_tcp(url + 8, out);
	if (strncmp(url, "unix://", 7) == 0)
	{
		out->is_unix = true;
		return parse_unix(url + 7, out);
	}
	if (strncmp(url, "rediss://", 9) == 0)
		return "TLS (rediss://) is not supported; use redis:// or unix://";
	return "the URL must start with redis:// or unix://";
}
