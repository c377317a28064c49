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

#include "cluster.h"
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
	ec_cluster_reset();
}

bool
ec_redis_is_connected(void)
{
	return ctx != NULL || ec_cluster_active();
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
simple_command(redisContext *c, int argc, const char **argv, const size_t *argvlen,
			   const char *what, StringInfo err)
{
	redisReply *reply = redisCommandArgv(c, argc, argv, argvlen);
	bool		ok;

	if (reply == NULL)
	{
		appendStringInfo(err, "%s: %s", what, c->errstr[0] ? c->errstr : "connection lost");
		return false;
	}
	ok = reply->type != REDIS_REPLY_ERROR;
	if (!ok)
		appendStringInfo(err, "%s failed: %s", what, reply->str);
	freeReplyObject(reply);
	return ok;
}

/* what every connection of this URL authenticates with, for cluster nodes */
static char conn_user[EC_URL_USER_MAX];
static char conn_password[EC_URL_PASSWORD_MAX];
static int	conn_timeout_ms;

/*
 * Open one connection to host:port (or the unix socket path) with the
 * timeout, AUTH and database of the current URL, proven with a command.
 * NULL with err set on failure.  The single node and every cluster node
 * go through here, so they authenticate alike.
 */
redisContext *
ec_redis_open(const char *host, int port, const char *path, int db,
			  StringInfo err)
{
	struct timeval tv;
	redisContext *c;

	tv.tv_sec = conn_timeout_ms / 1000;
	tv.tv_usec = (conn_timeout_ms % 1000) * 1000;
	c = path ? redisConnectUnixWithTimeout(path, tv) : redisConnectWithTimeout(host, port, tv);
	if (c == NULL || c->err)
	{
		if (path)
			appendStringInfo(err, "could not connect to Redis at %s: %s", path,
							 c ? c->errstr : "out of memory");
		else
			appendStringInfo(err, "could not connect to Redis at %s:%d: %s", host, port,
							 c ? c->errstr : "out of memory");
		goto fail;
	}
	if (redisSetTimeout(c, tv) != REDIS_OK)
	{
		appendStringInfo(err, "could not set the Redis timeout: %s", c->errstr);
		goto fail;
	}
	if (!path)
		(void) redisEnableKeepAlive(c);

	if (conn_password[0])
	{
		const char *argv[3] = {"AUTH", conn_user, conn_password};
		size_t		argvlen[3] = {4, strlen(conn_user), strlen(conn_password)};

		/* AUTH user password for an ACL user, AUTH password otherwise */
		if (!conn_user[0])
		{
			argv[1] = conn_password;
			argvlen[1] = argvlen[2];
		}
		if (!simple_command(c, conn_user[0] ? 3 : 2, argv, argvlen, "Redis AUTH", err))
			goto fail;
	}
	if (db != 0)
	{
		char		dbtext[16];
		const char *argv[2] = {"SELECT", dbtext};
		size_t		argvlen[2];

		snprintf(dbtext, sizeof(dbtext), "%d", db);
		argvlen[0] = 6;
		argvlen[1] = strlen(dbtext);
		if (!simple_command(c, 2, argv, argvlen, "Redis SELECT", err))
			goto fail;
	}
	else
	{
		/* prove the connection works: a NOAUTH server fails here */
		const char *argv[1] = {"PING"};
		size_t		argvlen[1] = {4};

		if (!simple_command(c, 1, argv, argvlen, "Redis PING", err))
			goto fail;
	}
	return c;

fail:
	if (c)
		redisFree(c);
	return NULL;
}

/* Does the node behind c run in cluster mode?  False on any doubt. */
static bool
cluster_enabled(redisContext *c)
{
	redisReply *reply = redisCommand(c, "INFO cluster");
	bool		yes;

	if (reply == NULL)
		return false;
	yes = reply->type == REDIS_REPLY_STRING &&
		strstr(reply->str, "cluster_enabled:1") != NULL;
	freeReplyObject(reply);
	return yes;
}

bool
ec_redis_connect(const char *urltext, const char *password_override,
				 int timeout_ms, StringInfo err)
{
	RedisUrl	url;
	const char *perr;

	ec_redis_disconnect();

	/* the GUC check hook accepted it, so this cannot fail; check anyway */
	perr = redis_url_parse(urltext, &url);
	if (perr)
	{
		appendStringInfo(err, "invalid entity_cache.redis_url: %s", perr);
		return false;
	}
	strlcpy(conn_user, url.user, sizeof(conn_user));
	strlcpy(conn_password,
			(password_override && password_override[0]) ? password_override : url.password,
			sizeof(conn_password));
	conn_timeout_ms = timeout_ms;

	ctx = ec_redis_open(url.host, url.port, url.is_unix ? url.path : NULL, url.db, err);
	if (ctx == NULL)
		return false;

	/*
	 * A cluster node: the cluster code takes over with its own connections,
	 * one per primary, and this one is no longer needed.
	 */
	if (!url.is_unix && cluster_enabled(ctx))
	{
		ec_redis_disconnect();
		if (url.db != 0)
		{
			appendStringInfo(err, "Redis at %s:%d is a cluster node, and a cluster has only database 0; "
							 "remove /%d from entity_cache.redis_url", url.host, url.port, url.db);
			return false;
		}
		return ec_cluster_start(url.host, url.port, err);
	}
	return true;
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

	if (ec_cluster_active())
		return ec_cluster_flush_pattern(pattern, len, nkeys, err);
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
