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

/* Sentinel: replicas of the master as its last ROLE reply listed them */
static int	cur_replicas = 0;

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

/* status: which node we are connected to (NULL: none), and whether over TLS */
void
ec_redis_publish_node(EcConn *c)
{
	/* a backend with a connection of its own (verify()) is not the worker */
	if (!ec_am_worker())
		return;
	ec_shared_set_text(ec_shared->redis_node, sizeof(ec_shared->redis_node),
					   c ? ec_conn_node(c) : "");
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->redis_tls = c ? ec_conn_is_tls(c) : false;
	SpinLockRelease(&ec_shared->mutex);
}

void
ec_redis_disconnect(void)
{
	if (conn)
		ec_redis_publish_node(NULL);
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
 * Load the TLS context the URL asks for, from the settings remembered for
 * this connect.  False with err set if a file is unusable.
 */
static void
remember_settings(void)
{
	remember(&used_ca_file, ec_redis_tls_ca_file);
	remember(&used_cert_file, ec_redis_tls_cert_file);
	remember(&used_key_file, ec_redis_tls_key_file);
	remember(&used_sentinel_password, ec_redis_sentinel_password);
	used_tls_verify = ec_redis_tls_verify;
}

static bool
load_tls(StringInfo err)
{
	EcTlsSettings settings;

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


/* What one sentinel says of the master. */
typedef struct SentinelView
{
	bool		valid;			/* it answered with an address */
	bool		failing_over;	/* it is running a failover of the master */
	long long	epoch;			/* its config-epoch: the newest view wins */
	char		host[EC_URL_HOST_MAX];
	int			port;
} SentinelView;

/* The value of field in a SENTINEL MASTER reply (a flat array), or NULL. */
static const char *
master_field(const redisReply *reply, const char *field)
{
	if (reply->type != REDIS_REPLY_ARRAY)
		return NULL;
	for (size_t i = 0; i + 1 < reply->elements; i += 2)
		if (reply->element[i]->type == REDIS_REPLY_STRING &&
			reply->element[i + 1]->type == REDIS_REPLY_STRING &&
			strcmp(reply->element[i]->str, field) == 0)
			return reply->element[i + 1]->str;
	return NULL;
}

/* Read the two replies of a sentinel into v; false with err set. */
static bool
read_sentinel_view(EcConn *c, SentinelView *v, StringInfo err)
{
	redisReply *addr = ec_conn_take_reply(c);
	redisReply *master = ec_conn_take_reply(c);
	const char *flags = master_field(master, "flags");
	const char *epoch = master_field(master, "config-epoch");

	if (addr->type == REDIS_REPLY_ARRAY && addr->elements == 2 &&
		addr->element[0]->type == REDIS_REPLY_STRING &&
		addr->element[1]->type == REDIS_REPLY_STRING &&
		addr->element[0]->len < sizeof(v->host) &&
		(v->port = atoi(addr->element[1]->str)) > 0 && v->port <= 65535)
	{
		memcpy(v->host, addr->element[0]->str, addr->element[0]->len);
		v->host[addr->element[0]->len] = '\0';
		v->valid = true;
		v->failing_over = flags && strstr(flags, "failover_in_progress") != NULL;
		v->epoch = epoch ? strtoll(epoch, NULL, 10) : 0;
	}
	else if (addr->type == REDIS_REPLY_ERROR)
		appendStringInfo(err, "Redis Sentinel at %s: %s", ec_conn_node(c), addr->str);
	else
		appendStringInfo(err, "Redis Sentinel at %s does not know a master named \"%s\"",
						 ec_conn_node(c), cur_url.master);
	freeReplyObject(addr);
	freeReplyObject(master);
	return v->valid;
}

/*
 * Ask every sentinel at once (one pipeline each, all in flight together)
 * where the master is.  views[i] is sentinel i's answer; err collects the
 * failures.
 */
static void
ask_sentinels(SentinelView *views, StringInfo err)
{
	EcConn	   *cs[EC_URL_MAX_HOSTS] = {0};
	const char *spass = used_sentinel_password[0] ? used_sentinel_password : cur_url.password;
	const char *suser = used_sentinel_password[0] ? "" : cur_url.user;
	const char *aargv[3] = {"SENTINEL", "get-master-addr-by-name", cur_url.master};
	size_t		aargvlen[3] = {8, 23, strlen(cur_url.master)};
	const char *margv[3] = {"SENTINEL", "master", cur_url.master};
	size_t		margvlen[3] = {8, 6, strlen(cur_url.master)};

	for (int i = 0; i < cur_url.nhosts; i++)
	{
		StringInfoData one;

		initStringInfo(&one);
		memset(&views[i], 0, sizeof(SentinelView));
		cs[i] = open_target(cur_url.hosts[i].host, cur_url.hosts[i].port, NULL,
							suser, spass, -1, "Redis Sentinel", &one);
		if (cs[i])
		{
			ec_conn_append(cs[i], 3, aargv, aargvlen);
			ec_conn_append(cs[i], 3, margv, margvlen);
		}
		else
			appendStringInfo(err, "%s%s", err->len ? "; " : "", one.data);
		pfree(one.data);
	}
	(void) ec_conn_exchange(cs, cur_url.nhosts, ec_deadline_after(cur_timeout_ms));
	for (int i = 0; i < cur_url.nhosts; i++)
	{
		StringInfoData one;

		if (cs[i] == NULL)
			continue;
		initStringInfo(&one);
		if (ec_conn_is_broken(cs[i]))
			appendStringInfo(&one, "Redis Sentinel: %s", ec_conn_error(cs[i]));
		else
			(void) read_sentinel_view(cs[i], &views[i], &one);
		if (one.len)
			appendStringInfo(err, "%s%s", err->len ? "; " : "", one.data);
		pfree(one.data);
		ec_conn_close(cs[i]);
	}
}

/*
 * A ROLE reply: the number of replicas of a master, or -1 with err set if
 * the node is not (or no longer) a master.
 */
static int
role_replicas(EcConn *c, const redisReply *reply, StringInfo err)
{
	if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 3 &&
		reply->element[0]->type == REDIS_REPLY_STRING &&
		strcmp(reply->element[0]->str, "master") == 0)
		return reply->element[2]->type == REDIS_REPLY_ARRAY ? (int) reply->element[2]->elements : 0;
	appendStringInfo(err, "Redis at %s is not %s (ROLE: %s)%s", ec_conn_node(c),
					 cur_url.sentinel ? "the master the sentinels named" : "a master",
					 reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
					 reply->element[0]->type == REDIS_REPLY_STRING ?
					 reply->element[0]->str :
					 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply",
					 cur_url.sentinel ? "; asking the sentinels again" : "; trying the next host");
	return -1;
}

/* ROLE says master?  False with err set otherwise. */
static bool
confirm_master(EcConn *c, StringInfo err)
{
	redisReply *reply = ec_conn_command(c, 1, (const char *[]) {"ROLE"}, (size_t[]) {4},
										ec_deadline_after(cur_timeout_ms), "Redis ROLE", err);

	if (reply == NULL)
		return false;
	cur_replicas = role_replicas(c, reply, err);
	freeReplyObject(reply);
	return cur_replicas >= 0;
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
 * The URL's hosts in order; the first that connects wins.  With several
 * hosts, a replica is skipped: they are failover candidates, and after a
 * promotion the first host may be the old master turned replica.  A Redis
 * Cluster node is taken whatever its role: the hosts are then seeds, and
 * any node can tell the slot map.
 */
static EcConn *
connect_hosts(StringInfo err, bool *is_cluster)
{
	for (int i = 0; i < cur_url.nhosts; i++)
	{
		EcConn	   *c;

		if (i > 0)
			appendStringInfoString(err, "; ");
		c = ec_redis_open_node(cur_url.hosts[i].host, cur_url.hosts[i].port, err);
		*is_cluster = c && cluster_enabled(c);
		if (c && (cur_url.nhosts == 1 || *is_cluster || confirm_master(c, err)))
		{
			resetStringInfo(err);
			return c;
		}
		ec_conn_close(c);
	}
	return NULL;
}

/*
 * One round: ask every sentinel; unless one of them is running a failover
 * of the master, connect to the master named by the newest view (highest
 * config-epoch: after a failover, the sentinels that ran it know first)
 * and confirm it with ROLE.
 */
static EcConn *
sentinel_round(StringInfo err)
{
	SentinelView views[EC_URL_MAX_HOSTS];
	SentinelView *best = NULL;
	EcConn	   *c;

	ask_sentinels(views, err);
	for (int i = 0; i < cur_url.nhosts; i++)
	{
		if (!views[i].valid)
			continue;
		if (views[i].failing_over)
		{
			/* the old master may still accept writes it is about to lose */
			appendStringInfo(err, "%sRedis Sentinel at %s:%d is running a failover of \"%s\"",
							 err->len ? "; " : "", cur_url.hosts[i].host,
							 cur_url.hosts[i].port, cur_url.master);
			return NULL;
		}
		if (best == NULL || views[i].epoch > best->epoch)
			best = &views[i];
	}
	if (best == NULL)
		return NULL;
	resetStringInfo(err);
	c = ec_redis_open_node(best->host, best->port, err);
	if (c && confirm_master(c, err))
		return c;
	ec_conn_close(c);
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
	bool		is_cluster = false;

	ec_redis_disconnect();
	remember_settings();

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
		conn = connect_hosts(err, &is_cluster);
	ec_redis_publish_node(conn);
	if (conn && is_cluster)
		return start_cluster(err);
	return conn != NULL;
}

void
ec_redis_append(int argc, const char **argv, const size_t *argvlen)
{
	if (ec_cluster_active())
	{
		ec_cluster_append(argc, argv, argvlen);
		return;
	}
	Assert(conn != NULL);
	ec_conn_append(conn, argc, argv, argvlen);
}

/*
 * Behind Sentinel, each pipeline ends with WAIT 1 (if the master had a
 * replica at the last look) and ROLE.  A failover promotes a replica, and
 * writes the old master acknowledged but had not replicated are lost with
 * it: so a batch counts as applied only once a replica has it too.  ROLE
 * notices a master turned replica, and keeps the replica count current.
 */
static void
append_sentinel_guard(void)
{
	char		timeout[16];

	if (cur_replicas > 0)
	{
		/* half the timeout: the reply must arrive before our deadline */
		snprintf(timeout, sizeof(timeout), "%d", Max(cur_timeout_ms / 2, 1));
		ec_conn_append(conn, 3, (const char *[]) {"WAIT", "1", timeout},
					   (size_t[]) {4, 1, strlen(timeout)});
	}
	ec_conn_append(conn, 1, (const char *[]) {"ROLE"}, (size_t[]) {4});
}

/* The replies of append_sentinel_guard(): false with err set if not safe. */
static bool
check_sentinel_guard(bool waited, StringInfo err)
{
	redisReply *wait = waited ? ec_conn_take_reply(conn) : NULL;
	redisReply *role = ec_conn_take_reply(conn);
	bool		ok = true;

	if (wait && (wait->type != REDIS_REPLY_INTEGER || wait->integer < 1))
	{
		appendStringInfo(err, "Redis at %s applied the batch, but no replica confirmed it within %d ms (WAIT); "
						 "it will be applied again", ec_conn_node(conn), Max(cur_timeout_ms / 2, 1));
		ok = false;
	}
	if (ok)
	{
		cur_replicas = role_replicas(conn, role, err);
		ok = cur_replicas >= 0;
	}
	if (wait)
		freeReplyObject(wait);
	freeReplyObject(role);
	return ok;
}

/*
 * Send what was appended to the one connection and read every reply; on
 * failure the connection is dropped (its stream may hold half a reply).
 */
static bool
exchange(StringInfo err)
{
	if (ec_conn_exchange(&conn, 1, ec_deadline_after(cur_timeout_ms)))
		return true;
	appendStringInfo(err, "Redis connection failed while reading replies: %s",
					 ec_conn_error(conn));
	ec_redis_disconnect();
	return false;
}

/*
 * Read the replies of every appended command.  All are read even after an
 * error reply, so the connection stays in step; the first error is kept.
 */
bool
ec_redis_read_replies(StringInfo err)
{
	bool		ok = true;
	bool		failover = false;
	int			n;
	bool		guard;
	bool		waited;

	/* a cluster has no one connection: cluster.c routes what was appended */
	if (ec_cluster_active())
		return ec_cluster_read_replies(err);
	n = ec_conn_pending(conn);
	guard = cur_url.sentinel && n > 0;
	waited = guard && cur_replicas > 0;
	if (guard)
		append_sentinel_guard();
	if (!exchange(err))
		return false;
	for (int i = 0; i < n; i++)
	{
		redisReply *reply = ec_conn_take_reply(conn);

		if (reply->type == REDIS_REPLY_ERROR && ok)
		{
			appendStringInfo(err, "Redis replied with an error: %s", reply->str);
			ok = false;
			/*
			 * Behind Sentinel or with several hosts, READONLY means a
			 * failover: find the new master.  (A lone read-only Redis is
			 * simply retried.)
			 */
			if ((cur_url.sentinel || cur_url.nhosts > 1) &&
				strncmp(reply->str, "READONLY", 8) == 0)
				failover = true;
		}
		freeReplyObject(reply);
	}
	if (guard)
	{
		StringInfoData gerr;

		initStringInfo(&gerr);
		if (!check_sentinel_guard(waited, &gerr))
		{
			if (ok)
				appendStringInfoString(err, gerr.data);
			ok = false;
			failover = true;
		}
		pfree(gerr.data);
	}
	if (failover)
		ec_redis_disconnect();
	return ok;
}

/*
 * One page of SCAN cursor MATCH pattern: page_cb gets the page's keys (an
 * array reply, valid only during the call) and cursor moves on; "0" when
 * the scan is complete.  The one reader of SCAN replies, for flushes and
 * for verify()'s orphan search.
 */
static bool
scan_page(const char *pattern, size_t len, char *cursor, size_t cursorsize,
		  EcScanPageFn page_cb, void *arg, StringInfo err)
{
	const char *argv[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT};
	size_t		argvlen[6] = {4, strlen(cursor), 5, len, 5, strlen(SCAN_COUNT)};
	redisReply *reply;
	bool		ok;

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
	ok = page_cb(arg, reply->element[1], err);
	freeReplyObject(reply);
	return ok;
}

/* Every page of a SCAN MATCH, to page_cb. */
static bool
scan_all(const char *pattern, size_t len, EcScanPageFn page_cb, void *arg,
		 StringInfo err)
{
	char		cursor[32] = "0";

	do
	{
		if (!scan_page(pattern, len, cursor, sizeof(cursor), page_cb, arg, err))
			return false;
	} while (strcmp(cursor, "0") != 0);
	return true;
}

/*
 * A flush's page: UNLINK its keys in one command (on a cluster the
 * pipeline splits it into one per key, each to its slot's owner).
 */
static bool
unlink_page(void *arg, const redisReply *keys, StringInfo err)
{
	const char **uargv;
	size_t	   *uargvlen;

	if (keys->elements == 0)
		return true;
	uargv = palloc(sizeof(char *) * (keys->elements + 1));
	uargvlen = palloc(sizeof(size_t) * (keys->elements + 1));
	uargv[0] = "UNLINK";
	uargvlen[0] = 6;
	for (size_t i = 0; i < keys->elements; i++)
	{
		uargv[i + 1] = keys->element[i]->str;
		uargvlen[i + 1] = keys->element[i]->len;
	}
	ec_redis_append(keys->elements + 1, uargv, uargvlen);
	pfree(uargv);
	pfree(uargvlen);
	return ec_redis_read_replies(err);
}

bool
ec_redis_flush_pattern(const char *pattern, size_t len, StringInfo err)
{
	if (ec_cluster_active())
		return ec_cluster_scan(pattern, len, unlink_page, NULL, err);
	return scan_all(pattern, len, unlink_page, NULL, err);
}

/* A GET's reply as values[i] (NULL for a missing key); false on an error. */
static bool
take_value(const redisReply *reply, const char *key, size_t keylen,
		   char **value, size_t *vlen, StringInfo err)
{
	*value = NULL;
	*vlen = 0;
	if (reply->type == REDIS_REPLY_STRING)
	{
		*value = pnstrdup(reply->str, reply->len);
		*vlen = reply->len;
		return true;
	}
	if (reply->type == REDIS_REPLY_NIL)
		return true;
	if (err)					/* only the first failure is told */
		appendStringInfo(err, "Redis GET of \"%.*s\" failed: %s", (int) keylen, key,
						 reply->type == REDIS_REPLY_ERROR ? reply->str : "not a string");
	return false;
}

/* verify()'s GETs on a cluster: each to its slot's owner, all at once. */
static bool
get_many_cluster(int n, const char *const *keys, const size_t *keylens,
				 char **values, size_t *vlens, StringInfo err)
{
	EcRoutedCmd *cmds = palloc0(sizeof(EcRoutedCmd) * n);
	const char **argv = palloc(sizeof(char *) * 2 * n);
	size_t	   *argvlen = palloc(sizeof(size_t) * 2 * n);
	bool		ok;

	for (int i = 0; i < n; i++)
	{
		argv[2 * i] = "GET";
		argvlen[2 * i] = 3;
		argv[2 * i + 1] = keys[i];
		argvlen[2 * i + 1] = keylens[i];
		cmds[i].argc = 2;
		cmds[i].argv = &argv[2 * i];
		cmds[i].argvlen = &argvlen[2 * i];
		cmds[i].slot = ec_cluster_key_slot(keys[i], keylens[i]);
		cmds[i].keep_reply = true;
	}
	ok = ec_cluster_run(cmds, n, err);
	for (int i = 0; i < n; i++)
	{
		values[i] = NULL;
		vlens[i] = 0;
		if (cmds[i].reply == NULL)
			continue;
		if (!take_value(cmds[i].reply, keys[i], keylens[i], &values[i], &vlens[i],
						ok ? err : NULL))
			ok = false;
		freeReplyObject(cmds[i].reply);
	}
	return ok;
}

/*
 * verify()'s reads: pipelined GETs (not MGET, so that each key can go to
 * its own cluster node), all in one exchange.
 */
bool
ec_redis_get_many(int n, const char *const *keys, const size_t *keylens,
				  char **values, size_t *vlens, StringInfo err)
{
	bool		ok = true;

	if (ec_cluster_active())
		return get_many_cluster(n, keys, keylens, values, vlens, err);
	for (int i = 0; i < n; i++)
	{
		const char *argv[2] = {"GET", keys[i]};
		size_t		argvlen[2] = {3, keylens[i]};

		ec_redis_append(2, argv, argvlen);
	}
	if (!exchange(err))
		return false;
	for (int i = 0; i < n; i++)
	{
		redisReply *reply = ec_conn_take_reply(conn);

		if (!take_value(reply, keys[i], keylens[i], &values[i], &vlens[i],
						ok ? err : NULL))
			ok = false;
		freeReplyObject(reply);
	}
	return ok;
}

typedef struct ScanKeys
{
	EcScanFn	cb;
	void	   *arg;
} ScanKeys;

/* verify()'s page: each key to the caller's callback. */
static bool
each_key(void *arg, const redisReply *keys, StringInfo err)
{
	ScanKeys   *sk = arg;

	for (size_t i = 0; i < keys->elements; i++)
		sk->cb(sk->arg, keys->element[i]->str, keys->element[i]->len);
	return true;
}

bool
ec_redis_scan(const char *pattern, size_t len, EcScanFn cb, void *arg,
			  StringInfo err)
{
	ScanKeys	sk = {cb, arg};

	if (ec_cluster_active())
		return ec_cluster_scan(pattern, len, each_key, &sk, err);
	return scan_all(pattern, len, each_key, &sk, err);
}
