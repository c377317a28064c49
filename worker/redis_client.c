/*-------------------------------------------------------------------------
 *
 * redis_client.c
 *	  Connect (with AUTH and SELECT), pipeline commands, read every reply,
 *	  and flush key patterns with SCAN + UNLINK, over transport.c.
 *
 * Every exchange is bounded by entity_cache.redis_timeout: a Redis that
 * stalls costs the worker one timeout, never a hang.  After any I/O error
 * the connection is unusable (half a reply may be buffered), so it is
 * dropped and the caller reconnects.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redis_client.h"

#include "utils/memutils.h"

#include "redis_url.h"

static EcConn *conn = NULL;

/* the settings of the last ec_redis_connect(), for ec_redis_open_node() */
static RedisUrl cur_url;
static char cur_password[EC_URL_PASSWORD_MAX];
static int	cur_timeout_ms = 2000;

/* keys per UNLINK when flushing a pattern */
#define SCAN_COUNT "1000"

void
ec_redis_disconnect(void)
{
	ec_conn_close(conn);
	conn = NULL;
}

bool
ec_redis_is_connected(void)
{
	return conn != NULL;
}

EcConn *
ec_redis_conn(void)
{
	return conn;
}

int
ec_redis_timeout(void)
{
	return cur_timeout_ms;
}

/*
 * AUTH (if there is a password), then SELECT (if db is not 0) or PING, in
 * one round trip.  PING proves the connection works: a server that wants
 * a password we lack fails here, not at the first batch.
 */
static bool
handshake(EcConn *c, StringInfo err)
{
	const char *labels[2];
	int			n = 0;
	bool		ok;
	char		db[16];

	if (cur_password[0])
	{
		/* AUTH user password for an ACL user, AUTH password otherwise */
		const char *argv[3] = {"AUTH", cur_url.user, cur_password};
		size_t		argvlen[3] = {4, strlen(cur_url.user), strlen(cur_password)};

		if (cur_url.user[0])
			ec_conn_append(c, 3, argv, argvlen);
		else
		{
			argv[1] = cur_password;
			argvlen[1] = argvlen[2];
			ec_conn_append(c, 2, argv, argvlen);
		}
		labels[n++] = "Redis AUTH";
	}
	snprintf(db, sizeof(db), "%d", cur_url.db);
	if (cur_url.db != 0)
	{
		const char *argv[2] = {"SELECT", db};
		size_t		argvlen[2] = {6, strlen(db)};

		ec_conn_append(c, 2, argv, argvlen);
		labels[n++] = "Redis SELECT";
	}
	else
	{
		const char *argv[1] = {"PING"};
		size_t		argvlen[1] = {4};

		ec_conn_append(c, 1, argv, argvlen);
		labels[n++] = "Redis PING";
	}

	if (!ec_conn_exchange(&c, 1, ec_deadline_after(cur_timeout_ms)))
	{
		appendStringInfo(err, "%s: %s", labels[0], ec_conn_error(c));
		return false;
	}
	ok = true;
	for (int i = 0; i < n; i++)
	{
		redisReply *reply = ec_conn_take_reply(c);

		if (ok && reply->type == REDIS_REPLY_ERROR)
		{
			appendStringInfo(err, "%s failed: %s", labels[i], reply->str);
			ok = false;
		}
		freeReplyObject(reply);
	}
	return ok;
}

EcConn *
ec_redis_open_node(const char *host, int port, StringInfo err)
{
	EcTarget	target = {0};
	EcConn	   *c;

	target.host = host;
	target.port = port;
	c = ec_conn_open(&target, ec_deadline_after(cur_timeout_ms), err);
	if (c == NULL)
		return NULL;
	if (!handshake(c, err))
	{
		ec_conn_close(c);
		return NULL;
	}
	return c;
}

static EcConn *
open_unix(const char *path, StringInfo err)
{
	EcTarget	target = {0};
	EcConn	   *c;

	target.unix_path = path;
	c = ec_conn_open(&target, ec_deadline_after(cur_timeout_ms), err);
	if (c == NULL)
		return NULL;
	if (!handshake(c, err))
	{
		ec_conn_close(c);
		return NULL;
	}
	return c;
}

bool
ec_redis_connect(const char *urltext, const char *password_override,
				 int timeout_ms, StringInfo err)
{
	const char *perr;

	ec_redis_disconnect();

	/* the GUC check hook accepted it, so this cannot fail; check anyway */
	perr = redis_url_parse(urltext, &cur_url);
	if (perr)
	{
		appendStringInfo(err, "invalid entity_cache.redis_url: %s", perr);
		return false;
	}
	strlcpy(cur_password,
			(password_override && password_override[0]) ? password_override : cur_url.password,
			sizeof(cur_password));
	cur_timeout_ms = timeout_ms;

	if (cur_url.is_unix)
		conn = open_unix(cur_url.path, err);
	else
		conn = ec_redis_open_node(cur_url.host, cur_url.port, err);
	return conn != NULL;
}

void
ec_redis_append(int argc, const char **argv, const size_t *argvlen)
{
	Assert(conn != NULL);
	ec_conn_append(conn, argc, argv, argvlen);
}

/*
 * Read the replies of every appended command.  All are read even after an
 * error reply, so the connection stays in step; the first error is kept.
 */
bool
ec_redis_read_replies(StringInfo err)
{
	bool		ok = true;
	redisReply *reply;

	if (!ec_conn_exchange(&conn, 1, ec_deadline_after(cur_timeout_ms)))
	{
		appendStringInfo(err, "Redis connection failed while reading replies: %s",
						 ec_conn_error(conn));
		ec_redis_disconnect();
		return false;
	}
	while ((reply = ec_conn_take_reply(conn)) != NULL)
	{
		if (reply->type == REDIS_REPLY_ERROR && ok)
		{
			appendStringInfo(err, "Redis replied with an error: %s", reply->str);
			ok = false;
		}
		freeReplyObject(reply);
	}
	return ok;
}

/* One SCAN step: the next cursor into cursor, the keys UNLINKed. */
static bool
scan_step(const char *pattern, size_t len, char *cursor, size_t cursorsize,
		  uint64 *nkeys, StringInfo err)
{
	const char *argv[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT};
	size_t		argvlen[6] = {4, strlen(cursor), 5, len, 5, strlen(SCAN_COUNT)};
	redisReply *reply;
	redisReply *keys;

	reply = ec_conn_command(conn, 6, argv, argvlen,
							ec_deadline_after(cur_timeout_ms), "Redis SCAN failed", err);
	if (reply == NULL)
	{
		ec_redis_disconnect();
		return false;
	}
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
		reply->element[0]->type != REDIS_REPLY_STRING ||
		reply->element[0]->len >= cursorsize ||
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
	return ec_redis_read_replies(err);
}

bool
ec_redis_flush_pattern(const char *pattern, size_t len, uint64 *nkeys,
					   StringInfo err)
{
	char		cursor[32] = "0";

	do
	{
		if (!scan_step(pattern, len, cursor, sizeof(cursor), nkeys, err))
			return false;
	} while (strcmp(cursor, "0") != 0);

	return true;
}
