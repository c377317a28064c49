/*-------------------------------------------------------------------------
 *
 * redis_client.c
 *	  Connect (with AUTH and SELECT), pipeline commands, read every reply,
 *	  and flush key patterns with SCAN + UNLINK.
 *
 * Every call is bounded by entity_cache.redis_timeout: a Redis that stalls
 * costs the worker one timeout, never a hang.  After any I/O error the
 * context is unusable (hiredis may have half a reply buffered), so it is
 * dropped and the caller reconnects.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redis_client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include "redis_url.h"

static redisContext *ctx = NULL;
static int	pending = 0;		/* commands appended, replies not yet read */

/* keys per UNLINK when flushing a pattern */
#define SCAN_COUNT "1000"

void
ec_redis_disconnect(void)
{
	if (ctx)
		redisFree(ctx);
	ctx = NULL;
	pending = 0;
}

bool
ec_redis_is_connected(void)
{
	return ctx != NULL;
}

static void
io_error(StringInfo err, const char *what)
{
	appendStringInfo(err, "%s: %s", what,
					 ctx && ctx->errstr[0] ? ctx->errstr : "connection lost");
	ec_redis_disconnect();
}

/* Run one command synchronously; false with err set unless the reply is OK. */
static bool
simple_command(int argc, const char **argv, const size_t *argvlen,
			   const char *what, StringInfo err)
{
	redisReply *reply = redisCommandArgv(ctx, argc, argv, argvlen);
	bool		ok;

	if (reply == NULL)
	{
		io_error(err, what);
		return false;
	}
	ok = reply->type != REDIS_REPLY_ERROR;
	if (!ok)
		appendStringInfo(err, "%s failed: %s", what, reply->str);
	freeReplyObject(reply);
	return ok;
}

bool
ec_redis_connect(const char *urltext, const char *password_override,
				 int timeout_ms, StringInfo err)
{
	RedisUrl	url;
	const char *perr;
	struct timeval tv;
	const char *password;

	ec_redis_disconnect();

	/* the GUC check hook accepted it, so this cannot fail; check anyway */
	perr = redis_url_parse(urltext, &url);
	if (perr)
	{
		appendStringInfo(err, "invalid entity_cache.redis_url: %s", perr);
		return false;
	}

	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	if (url.is_unix)
		ctx = redisConnectUnixWithTimeout(url.path, tv);
	else
		ctx = redisConnectWithTimeout(url.host, url.port, tv);
	if (ctx == NULL || ctx->err)
	{
		if (url.is_unix)
			appendStringInfo(err, "could not connect to Redis at %s", url.path);
		else
			appendStringInfo(err, "could not connect to Redis at %s:%d", url.host, url.port);
		io_error(err, "");
		return false;
	}
	if (redisSetTimeout(ctx, tv) != REDIS_OK)
	{
		io_error(err, "could not set the Redis timeout");
		return false;
	}
	if (!url.is_unix)
		(void) redisEnableKeepAlive(ctx);

	password = (password_override && password_override[0]) ? password_override : url.password;
	if (password[0])
	{
		const char *argv[3] = {"AUTH", url.user, password};
		size_t		argvlen[3] = {4, strlen(url.user), strlen(password)};

		/* AUTH user password for an ACL user, AUTH password otherwise */
		if (url.user[0])
		{
			if (!simple_command(3, argv, argvlen, "Redis AUTH", err))
				goto fail;
		}
		else
		{
			argv[1] = password;
			argvlen[1] = argvlen[2];
			if (!simple_command(2, argv, argvlen, "Redis AUTH", err))
				goto fail;
		}
	}
	if (url.db != 0)
	{
		char		db[16];
		const char *argv[2] = {"SELECT", db};
		size_t		argvlen[2];

		snprintf(db, sizeof(db), "%d", url.db);
		argvlen[0] = 6;
		argvlen[1] = strlen(db);
		if (!simple_command(2, argv, argvlen, "Redis SELECT", err))
			goto fail;
	}
	else
	{
		/* prove the connection works: a NOAUTH server fails here */
		const char *argv[1] = {"PING"};
		size_t		argvlen[1] = {4};

		if (!simple_command(1, argv, argvlen, "Redis PING", err))
			goto fail;
	}
	return true;

fail:
	ec_redis_disconnect();
	return false;
}

void
ec_redis_append(int argc, const char **argv, const size_t *argvlen)
{
	Assert(ctx != NULL);
	/* only fails on out-of-memory, which the read will report */
	(void) redisAppendCommandArgv(ctx, argc, argv, argvlen);
	pending++;
}

/*
 * Read the replies of every appended command.  All are read even after an
 * error reply, so the connection stays in step; the first error is kept.
 */
bool
ec_redis_read_replies(StringInfo err)
{
	bool		ok = true;

	while (pending > 0)
	{
		redisReply *reply;

		if (redisGetReply(ctx, (void **) &reply) != REDIS_OK || reply == NULL)
		{
			io_error(err, "Redis connection failed while reading replies");
			return false;
		}
		pending--;
		if (reply->type == REDIS_REPLY_ERROR && ok)
		{
			appendStringInfo(err, "Redis replied with an error: %s", reply->str);
			ok = false;
		}
		freeReplyObject(reply);
	}
	return ok;
}

bool
ec_redis_flush_pattern(const char *pattern, size_t len, uint64 *nkeys,
					   StringInfo err)
{
	char		cursor[32] = "0";

	do
	{
		const char *argv[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT};
		size_t		argvlen[6] = {4, strlen(cursor), 5, len, 5, strlen(SCAN_COUNT)};
		redisReply *reply = redisCommandArgv(ctx, 6, argv, argvlen);
		redisReply *keys;

		if (reply == NULL)
		{
			io_error(err, "Redis SCAN failed");
			return false;
		}
		if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
			reply->element[0]->type != REDIS_REPLY_STRING ||
			reply->element[0]->len >= sizeof(cursor) ||
			reply->element[1]->type != REDIS_REPLY_ARRAY)
		{
			appendStringInfo(err, "Redis SCAN failed: %s",
							 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
			freeReplyObject(reply);
			return false;
		}
		memcpy(cursor, reply->element[0]->str, reply->element[0]->len);
		cursor[reply->element[0]->len] = '\0';

		keys = reply->element[1];
		if (keys->elements > 0)
		{
			const char **uargv = palloc(sizeof(char *) * (keys->elements + 1));
			size_t	   *uargvlen = palloc(sizeof(size_t) * (keys->elements + 1));

			uargv[0] = "UNLINK";
			uargvlen[0] = 6;
			for (size_t i = 0; i < keys->elements; i++)
			{
				uargv[i + 1] = keys->element[i]->str;
				uargvlen[i + 1] = keys->element[i]->len;
			}
			ec_redis_append(keys->elements + 1, uargv, uargvlen);
			*nkeys += keys->elements;
			pfree(uargv);
			pfree(uargvlen);
		}
		freeReplyObject(reply);
		if (!ec_redis_read_replies(err))
			return false;
	} while (strcmp(cursor, "0") != 0);

	return true;
}

/*
 * verify()'s reads: pipelined GETs (not MGET, so that a cluster router can
 * send each key to its node).  The replies of all n are read even after an
 * error, so the connection stays in step.
 */
bool
ec_redis_get_many(int n, const char *const *keys, const size_t *keylens,
				  char **values, size_t *vlens, StringInfo err)
{
	bool		ok = true;

	for (int i = 0; i < n; i++)
	{
		const char *argv[2] = {"GET", keys[i]};
		size_t		argvlen[2] = {3, keylens[i]};

		ec_redis_append(2, argv, argvlen);
	}
	for (int i = 0; i < n; i++)
	{
		redisReply *reply;

		values[i] = NULL;
		vlens[i] = 0;
		if (redisGetReply(ctx, (void **) &reply) != REDIS_OK || reply == NULL)
		{
			io_error(err, "Redis connection failed while reading replies");
			return false;
		}
		pending--;
		if (reply->type == REDIS_REPLY_STRING)
		{
			values[i] = pnstrdup(reply->str, reply->len);
			vlens[i] = reply->len;
		}
		else if (reply->type != REDIS_REPLY_NIL && ok)
		{
			appendStringInfo(err, "Redis GET of \"%.*s\" failed: %s", (int) keylens[i],
							 keys[i], reply->type == REDIS_REPLY_ERROR ? reply->str :
							 "not a string");
			ok = false;
		}
		freeReplyObject(reply);
	}
	return ok;
}

bool
ec_redis_scan(const char *pattern, size_t len, EcScanFn cb, void *arg,
			  StringInfo err)
{
	char		cursor[32] = "0";

	do
	{
		const char *argv[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT};
		size_t		argvlen[6] = {4, strlen(cursor), 5, len, 5, strlen(SCAN_COUNT)};
		redisReply *reply = redisCommandArgv(ctx, 6, argv, argvlen);

		if (reply == NULL)
		{
			io_error(err, "Redis SCAN failed");
			return false;
		}
		if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
			reply->element[0]->type != REDIS_REPLY_STRING ||
			reply->element[0]->len >= sizeof(cursor) ||
			reply->element[1]->type != REDIS_REPLY_ARRAY)
		{
			appendStringInfo(err, "Redis SCAN failed: %s",
							 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
			freeReplyObject(reply);
			return false;
		}
		memcpy(cursor, reply->element[0]->str, reply->element[0]->len);
		cursor[reply->element[0]->len] = '\0';
		for (size_t i = 0; i < reply->element[1]->elements; i++)
			cb(arg, reply->element[1]->element[i]->str, reply->element[1]->element[i]->len);
		freeReplyObject(reply);
	} while (strcmp(cursor, "0") != 0);
	return true;
}
