/*-------------------------------------------------------------------------
 *
 * fuzz_redis_url.c
 *	  libFuzzer target for redis_url_parse().
 *
 * entity_cache.redis_url is typed by an operator and parsed in the GUC
 * check hook of every backend and in the worker, so a parser bug is a
 * server crash.  This target feeds arbitrary bytes, as a NUL-terminated
 * string, and on success checks what the callers rely on: every field is a
 * NUL-terminated string inside its buffer, ports and database are in
 * range, a TCP URL has 1 to 16 hosts, a sentinel URL a master name, a unix
 * URL an absolute path, and the password span used for masking lies inside
 * the text, right after a ':'.
 *
 * Built and run by scripts/fuzz.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_url.h"
#include "fuzz_check.h"


/* true if buf (size bytes) holds a NUL, so strlen() stays inside it */
static int
terminated(const char *buf, size_t size)
{
	return memchr(buf, '\0', size) != NULL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *url;
	RedisUrl	parsed;
	const char *err;

	/*
	 * An exact-size heap copy: ASan then catches a read even one byte past
	 * the terminator.  Embedded NULs simply end the string early, as they
	 * would in a GUC value.
	 */
	url = malloc(size + 1);
	if (url == NULL)
		return 0;
	memcpy(url, data, size);
	url[size] = '\0';

	/* garbage in the output must not leak into the result */
	memset(&parsed, 0xA5, sizeof(parsed));

	err = redis_url_parse(url, &parsed);
	if (err != NULL)
	{
		/* messages are shown to operators: never empty */
		CHECK(err[0] != '\0');
		free(url);
		return 0;
	}

	CHECK(terminated(parsed.path, sizeof(parsed.path)));
	CHECK(terminated(parsed.user, sizeof(parsed.user)));
	CHECK(terminated(parsed.password, sizeof(parsed.password)));
	CHECK(terminated(parsed.master, sizeof(parsed.master)));
	CHECK(parsed.db >= 0 && parsed.db <= 1000000);
	CHECK(parsed.nhosts >= 0 && parsed.nhosts <= EC_URL_MAX_HOSTS);

	/* the masking of SHOW replaces exactly this span: it must be inside */
	CHECK(parsed.password_off + parsed.password_len <= strlen(url));
	if (parsed.password_len > 0)
		CHECK(url[parsed.password_off - 1] == ':');
	else
		CHECK(parsed.password[0] == '\0');

	if (parsed.is_unix)
	{
		CHECK(strncmp(url, "unix://", 7) == 0);
		CHECK(parsed.path[0] == '/');
		/* the worker connects by path only: no host may linger */
		CHECK(parsed.nhosts == 0);
		CHECK(!parsed.tls && !parsed.sentinel);
	}
	else
	{
		CHECK(strncmp(url, parsed.tls ? "rediss" : "redis", parsed.tls ? 6 : 5) == 0);
		CHECK(parsed.nhosts >= 1);
		for (int i = 0; i < parsed.nhosts; i++)
		{
			CHECK(terminated(parsed.hosts[i].host, sizeof(parsed.hosts[i].host)));
			CHECK(parsed.hosts[i].host[0] != '\0');
			/* the authority ends at the first '/' and ',' splits it */
			CHECK(strchr(parsed.hosts[i].host, '/') == NULL);
			CHECK(strchr(parsed.hosts[i].host, ',') == NULL);
			CHECK(parsed.hosts[i].port >= 1 && parsed.hosts[i].port <= 65535);
		}
		CHECK(parsed.path[0] == '\0');
		/* a sentinel URL always names its master, others never do */
		CHECK(parsed.sentinel == (parsed.master[0] != '\0'));
	}

	free(url);
	return 0;
}
