/*-------------------------------------------------------------------------
 *
 * redis_client.c
 *	  Connect (TLS, several hosts, Sentinel; AUTH and SELECT), pipeline
 *	  commands, read every reply, and flush key patterns with SCAN +
 *	  UNLINK, over transport.c.
 *
 * Every exchange is bounded by entity_cache.redis_timeout: a Redis that
 * stalls costs the worker one timeout, never a hang.  After any I/O error
 * the connection is unusable (half a reply may be buffered), so it is
 * dropped and the caller reconnects.
 *
 * Behind Sentinel, the master is asked of the sentinels at each connect
 * and confirmed with ROLE.  A failover shows up as a lost connection (the
 * sentinels kill the clients of a demoted master) or a READONLY reply; the
 * connection is then dropped, and the next connect asks the sentinels
 * again, retrying for up to one timeout while they elect a new master.
 *
 * A node that reports cluster_enabled:1 hands over to cluster.c, which
 * keeps its own connections, one per primary, with the same settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redis_client.h"

#include "entity_cache.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"

#include "cluster.h"
#include "redis_url.h"

static EcConn *conn = NULL;

/* the settings of the last ec_redis_connect(), for ec_redis_open_node() */
static RedisUrl cur_url;
static char cur_password[EC_URL_PASSWORD_MAX];
static int	cur_timeout_ms = 2000;
static EcTlsContext *cur_tls = NULL;	/* NULL: plaintext */

/* the TLS and Sentinel settings in force, to notice a reload changing them */
static char *used_ca_file = NULL;
static char *used_cert_file = NULL;
static char *used_key_file = NULL;
static int	used_tls_verify = -1;
static char *used_sentinel_password = NULL;

/* keys per UNLINK when flushing a pattern */
#define SCAN_COUNT "1000"

/* pause between two rounds of asking the sentinels during a failover */
#define SENTINEL_RETRY_MS 100

/* status: which node we are connected to, and whether over TLS */
static void
publish_node(EcConn *c)
{
	if (ec_shared == NULL)
		return;
	SpinLockAcquire(&ec_shared->mutex);
	strlcpy(ec_shared->redis_node, c ? ec_conn_node(c) : "", sizeof(ec_shared->redis_node));
	ec_shared->redis_tls = c ? ec_conn_is_tls(c) : false;
	SpinLockRelease(&ec_shared->mutex);
}

void
ec_redis_disconnect(void)
{
	if (conn)
		publish_node(NULL);
	ec_conn_close(conn);
	conn = NULL;
	ec_cluster_reset();
}

bool
ec_redis_is_connected(void)
{
	return conn != NULL || ec_cluster_active();
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

static bool
same(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") == 0;
}

static void
remember(char **slot, const char *value)
{
	if (*slot)
		pfree(*slot);
	*slot = MemoryContextStrdup(TopMemoryContext, value ? value : "");
}

bool
ec_redis_tls_settings_changed(void)
{
	return !same(used_ca_file, ec_redis_tls_ca_file) ||
		!same(used_cert_file, ec_redis_tls_cert_file) ||
		!same(used_key_file, ec_redis_tls_key_file) ||
		used_tls_verify != ec_redis_tls_verify ||
		!same(used_sentinel_password, ec_redis_sentinel_password);
}

/*
 * Load the TLS context the URL asks for, from the current settings; also
 * remember those settings.  False with err set if a file is unusable.
 */
static bool
load_tls(StringInfo err)
{
	EcTlsSettings settings;

	remember(&used_ca_file, ec_redis_tls_ca_file);
	remember(&used_cert_file, ec_redis_tls_cert_file);
	remember(&used_key_file, ec_redis_tls_key_file);
	remember(&used_sentinel_password, ec_redis_sentinel_password);
	used_tls_verify = ec_redis_tls_verify;

	ec_tls_context_free(cur_tls);
	cur_tls = NULL;
	if (!cur_url.tls)
		return true;
	settings.ca_file = used_ca_file;
	settings.cert_file = used_cert_file;
	settings.key_file = used_key_file;
	settings.verify = (EcTlsVerify) used_tls_verify;
	cur_tls = ec_tls_context_create(&settings, err);
	if (cur_tls && settings.verify == EC_TLS_VERIFY_NONE)
		ereport(WARNING,
				(errmsg("entity_cache: the Redis server's TLS certificate is not verified"),
				 errdetail("entity_cache.redis_tls_verify = none: anyone on the network path can impersonate Redis."),
				 errhint("Set entity_cache.redis_tls_verify to full (or ca) and entity_cache.redis_tls_ca_file.")));
	return cur_tls != NULL;
}

/*
 * AUTH (if there is a password), then SELECT (db > 0) or PING (db == 0),
 * in one round trip; db < 0: AUTH only (sentinels).  PING proves the
 * connection works: a server that wants a password we lack fails here,
 * not at the first batch.
 */
static bool
handshake(EcConn *c, const char *user, const char *password, int db,
		  const char *who, StringInfo err)
{
	const char *labels[2];
	int			n = 0;
	bool		ok = true;
	char		dbtext[16];

	if (password[0])
	{
		/* AUTH user password for an ACL user, AUTH password otherwise */
		const char *argv[3] = {"AUTH", user, password};
		size_t		argvlen[3] = {4, strlen(user), strlen(password)};

		if (user[0])
			ec_conn_append(c, 3, argv, argvlen);
		else
			ec_conn_append(c, 2, (const char *[]) {"AUTH", password},
						   (size_t[]) {4, strlen(password)});
		labels[n++] = "AUTH";
	}
	snprintf(dbtext, sizeof(dbtext), "%d", db);
	if (db > 0)
	{
		ec_conn_append(c, 2, (const char *[]) {"SELECT", dbtext},
					   (size_t[]) {6, strlen(dbtext)});
		labels[n++] = "SELECT";
	}
	else if (db == 0)
	{
		ec_conn_append(c, 1, (const char *[]) {"PING"}, (size_t[]) {4});
		labels[n++] = "PING";
	}

	if (n > 0 && !ec_conn_exchange(&c, 1, ec_deadline_after(cur_timeout_ms)))
	{
		appendStringInfo(err, "%s %s: %s", who, labels[0], ec_conn_error(c));
		return false;
	}
	for (int i = 0; i < n; i++)
	{
		redisReply *reply = ec_conn_take_reply(c);

		if (ok && reply->type == REDIS_REPLY_ERROR)
		{
			appendStringInfo(err, "%s %s failed: %s", who, labels[i], reply->str);
			ok = false;
		}
		freeReplyObject(reply);
	}
	return ok;
}

/* Connect to a node (or socket) and authenticate; NULL with err set. */
static EcConn *
open_target(const char *host, int port, const char *unix_path,
			const char *user, const char *password, int db,
			const char *who, StringInfo err)
{
	EcTarget	target = {0};
	EcConn	   *c;

	target.host = host;
	target.port = port;
	target.unix_path = unix_path;
	target.tls = unix_path ? NULL : cur_tls;
	c = ec_conn_open(&target, ec_deadline_after(cur_timeout_ms), err);
	if (c != NULL && !handshake(c, user, password, db, who, err))
	{
		ec_conn_close(c);
		c = NULL;
	}
	return c;
}

EcConn *
ec_redis_open_node(const char *host, int port, StringInfo err)
{
	return open_target(host, port, NULL, cur_url.user, cur_password,
					   cur_url.db, "Redis", err);
}

/* The URL's hosts in order; the first that connects wins. */
static EcConn *
connect_hosts(StringInfo err)
{
	for (int i = 0; i < cur_url.nhosts; i++)
	{
		EcConn	   *c;

		if (i > 0)
			appendStringInfoString(err, "; ");
		c = ec_redis_open_node(cur_url.hosts[i].host, cur_url.hosts[i].port, err);
		if (c)
		{
			resetStringInfo(err);
			return c;
		}
	}
	return NULL;
}

/*
 * Ask sentinel i where the master is: true with host and port set, or
 * false with err set.
 */
static bool
sentinel_ask(int i, char *host, size_t hostsize, int *port, StringInfo err)
{
	const RedisUrlHost *s = &cur_url.hosts[i];
	const char *spass = used_sentinel_password[0] ? used_sentinel_password : cur_url.password;
	const char *suser = used_sentinel_password[0] ? "" : cur_url.user;
	const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", cur_url.master};
	size_t		argvlen[3] = {8, 23, strlen(cur_url.master)};
	EcConn	   *c;
	redisReply *reply;
	bool		ok = false;

	c = open_target(s->host, s->port, NULL, suser, spass, -1, "Redis Sentinel", err);
	if (c == NULL)
		return false;
	reply = ec_conn_command(c, 3, argv, argvlen, ec_deadline_after(cur_timeout_ms),
							"Redis Sentinel", err);
	if (reply == NULL)
		;
	else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
			 reply->element[0]->type == REDIS_REPLY_STRING &&
			 reply->element[1]->type == REDIS_REPLY_STRING &&
			 reply->element[0]->len < hostsize &&
			 (*port = atoi(reply->element[1]->str)) > 0 && *port <= 65535)
	{
		memcpy(host, reply->element[0]->str, reply->element[0]->len);
		host[reply->element[0]->len] = '\0';
		ok = true;
	}
	else if (reply->type == REDIS_REPLY_ERROR)
		appendStringInfo(err, "Redis Sentinel at %s: %s", ec_conn_node(c), reply->str);
	else
		appendStringInfo(err, "Redis Sentinel at %s does not know a master named \"%s\"",
						 ec_conn_node(c), cur_url.master);
	if (reply)
		freeReplyObject(reply);
	ec_conn_close(c);
	return ok;
}

/* ROLE says master?  False with err set otherwise. */
static bool
confirm_master(EcConn *c, StringInfo err)
{
	redisReply *reply = ec_conn_command(c, 1, (const char *[]) {"ROLE"}, (size_t[]) {4},
										ec_deadline_after(cur_timeout_ms), "Redis ROLE", err);
	bool		ok;

	if (reply == NULL)
		return false;
	ok = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
		reply->element[0]->type == REDIS_REPLY_STRING &&
		strcmp(reply->element[0]->str, "master") == 0;
	if (!ok)
		appendStringInfo(err, "Redis at %s, named master \"%s\" by the sentinels, is not a master (ROLE: %s)",
						 ec_conn_node(c), cur_url.master,
						 reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
						 reply->element[0]->type == REDIS_REPLY_STRING ?
						 reply->element[0]->str : "unexpected reply");
	freeReplyObject(reply);
	return ok;
}

/* One round: each sentinel in turn, until one names a confirmed master. */
static EcConn *
sentinel_round(StringInfo err)
{
	char		host[EC_URL_HOST_MAX];
	int			port;

	for (int i = 0; i < cur_url.nhosts; i++)
	{
		EcConn	   *c;

		if (err->len > 0)
			appendStringInfoString(err, "; ");
		if (!sentinel_ask(i, host, sizeof(host), &port, err))
			continue;
		c = ec_redis_open_node(host, port, err);
		if (c && confirm_master(c, err))
		{
			resetStringInfo(err);
			return c;
		}
		ec_conn_close(c);
	}
	return NULL;
}

/*
 * Rounds of asking the sentinels, for up to one timeout: during a
 * failover they name the old master until they have elected a new one.
 */
static EcConn *
connect_sentinel(StringInfo err)
{
	EcDeadline	deadline = ec_deadline_after(cur_timeout_ms);

	for (;;)
	{
		EcConn	   *c;

		resetStringInfo(err);
		c = sentinel_round(err);
		if (c || ec_deadline_after(0) + SENTINEL_RETRY_MS >= deadline)
			return c;
		/* not WL_LATCH_SET: commits set the latch, and that is for the main loop */
		(void) WaitLatch(NULL, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, SENTINEL_RETRY_MS,
						 PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Does the node behind c run in cluster mode?  False on any doubt. */
static bool
cluster_enabled(EcConn *c)
{
	StringInfoData ignored;
	redisReply *reply;
	bool		yes;

	initStringInfo(&ignored);
	reply = ec_conn_command(c, 2, (const char *[]) {"INFO", "cluster"}, (size_t[]) {4, 7},
							ec_deadline_after(cur_timeout_ms), "Redis INFO", &ignored);
	pfree(ignored.data);
	if (reply == NULL)
		return false;
	yes = reply->type == REDIS_REPLY_STRING &&
		strstr(reply->str, "cluster_enabled:1") != NULL;
	freeReplyObject(reply);
	return yes;
}

/*
 * The URL's node is part of a Redis Cluster: hand over to cluster.c, which
 * loads the slot map from the first of the URL's hosts that answers and
 * keeps a connection per primary.  This connection is no longer needed.
 */
static bool
start_cluster(StringInfo err)
{
	ec_redis_disconnect();
	if (cur_url.db != 0)
	{
		appendStringInfo(err, "entity_cache.redis_url names a Redis Cluster node, and a cluster has only database 0; "
						 "remove /%d from the URL", cur_url.db);
		return false;
	}
	return ec_cluster_start(cur_url.hosts, cur_url.nhosts, err);
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
	if (!load_tls(err))
		return false;

	if (cur_url.is_unix)
		conn = open_target(NULL, 0, cur_url.path, cur_url.user, cur_password,
						   cur_url.db, "Redis", err);
	else if (cur_url.sentinel)
		conn = connect_sentinel(err);
	else
		conn = connect_hosts(err);
	publish_node(conn);
	if (conn && !cur_url.is_unix && !cur_url.sentinel && cluster_enabled(conn))
		return start_cluster(err);
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
	bool		readonly = false;
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
			/* behind Sentinel, READONLY means a failover: find the new master */
			if (cur_url.sentinel && strncmp(reply->str, "READONLY", 8) == 0)
				readonly = true;
		}
		freeReplyObject(reply);
	}
	if (readonly)
		ec_redis_disconnect();
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

	if (ec_cluster_active())
		return ec_cluster_flush_pattern(pattern, len, nkeys, err);
	do
	{
		if (!scan_step(pattern, len, cursor, sizeof(cursor), nkeys, err))
			return false;
	} while (strcmp(cursor, "0") != 0);

	return true;
}
