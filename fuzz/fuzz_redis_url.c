/*-------------------------------------------------------------------------
 *
 * fuzz_redis_url.c
 *	  libFuzzer target for redis_url_parse().
 *
 * entity_cache.redis_url is typed by an operator and parsed in the GUC
 * check hook of every backend and in the worker, so a parser bug is a
 * server crash.  This target feeds arbitrary bytes, as a NUL-terminated
 * string, and on success checks what the callers rely on: every field is a
 * NUL-terminated string inside its buffer, the port and database are in
 * range, a TCP URL has a host, a unix URL an absolute path.
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

	CHECK(terminated(parsed.host, sizeof(parsed.host)));
	CHECK(terminated(parsed.path, sizeof(parsed.path)));
	CHECK(terminated(parsed.user, sizeof(parsed.user)));
	CHECK(terminated(parsed.password, sizeof(parsed.password)));
	CHECK(parsed.port >= 1 && parsed.port <= 65535);
	CHECK(parsed.db >= 0 && parsed.db <= 1000000);

	if (parsed.is_unix)
	{
		CHECK(strncmp(url, "unix://", 7) == 0);
		CHECK(parsed.path[0] == '/');
		/* the worker connects by path only: no host may linger */
		CHECK(parsed.host[0] == '\0');
	}
	else
	{
		CHECK(strncmp(url, "redis://", 8) == 0);
		CHECK(parsed.host[0] != '\0');
		/* the authority ends at the first '/', so the host never holds one */
		CHECK(strchr(parsed.host, '/') == NULL);
		CHECK(parsed.path[0] == '\0');
	}

	free(url);
	return 0;
}
