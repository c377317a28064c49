/*-------------------------------------------------------------------------
 *
 * cluster.c
 *	  Redis Cluster for the worker: the slot map, a connection per node,
 *	  and batches routed to the primaries of their keys' slots.
 *
 * The map comes from CLUSTER SLOTS of the first node that answers: the
 * URL's hosts (seeds) in order at first, later the primaries of the map,
 * then the seeds.  A batch is split by node, and every node's pipeline is
 * sent and read in one exchange that polls them all, so all nodes work at
 * once and a batch costs the slowest node's round trip, not the sum.
 * Replies are matched to commands in order, per connection:
 *
 *	MOVED	 the slot has a new owner: resend there, and reload the map
 *	ASK		 the slot is migrating and this key is already on the target:
 *			 resend there after ASKING, map unchanged
 *	TRYAGAIN / CLUSTERDOWN / LOADING / MASTERDOWN
 *			 transient: pause, then resend
 *
 * A command counts as done only on a reply from the node that owns its
 * slot (a redirection is not an acknowledgement), and the caller deletes
 * only the queue rows of done commands.  Whatever is still not done after
 * a few rounds is left for the next batch, which starts with a fresh map.
 *
 * Node connections are the worker's transport (transport.h), opened by
 * ec_redis_open_node() with the URL's TLS settings, AUTH and timeout, and
 * driven together by ec_conn_exchange(), which polls them all at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cluster.h"

#include "entity_cache.h"

#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "cluster_slots.h"
#include "redis_client.h"
#include "redis_url.h"
#include "transport.h"

/* connections: primaries, plus redirection targets not yet in the map */
#define MAX_CONNS (2 * EC_CLUSTER_MAX_NODES)
/* rounds of one run: enough for MOVED then ASK then a retry or two */
#define MAX_ROUNDS 6
#define PAUSE_MS 50
#define PAUSE_MAX_MS 800
/* SCAN page size when flushing a pattern */
#define SCAN_COUNT "1000"

typedef struct NodeConn
{
	char		host[EC_CLUSTER_HOST_MAX];
	int			port;
	EcConn	   *conn;			/* NULL until connected, or after an error */
	int			nsent;			/* commands sent this round */
	bool		down;			/* could not connect this round */
} NodeConn;

static bool active = false;
static EcSlotMap *map = NULL;	/* in TopMemoryContext, once */
static EcSlotMap *spare = NULL; /* the next map is parsed here, then swapped */
static NodeConn *conns = NULL;
static int	nconns = 0;
static bool map_stale = false;
static RedisUrlHost seeds[EC_URL_MAX_HOSTS];	/* the URL's hosts */
static int	nseeds = 0;
static uint64 redirections = 0;

/*
 * Status: primaries known, redirections followed; when the map was just
 * loaded from, the node it came from is the worker's redis_node.
 */
static void
publish_status(EcConn *loaded_from)
{
	TimestampTz now;

	/* a backend with a cluster connection of its own is not the worker */
	if (!ec_am_worker())
		return;
	if (loaded_from || !active)
		ec_redis_publish_node(loaded_from);
	now = loaded_from ? GetCurrentTimestamp() : 0;
	SpinLockAcquire(&ec_shared->mutex);
	ec_shared->cluster_nodes = active ? map->nnodes : 0;
	if (loaded_from)
		ec_shared->cluster_slots_loaded_at = now;
	ec_shared->cluster_redirections = redirections;
	SpinLockRelease(&ec_shared->mutex);
}

bool
ec_cluster_active(void)
{
	return active;
}

int
ec_cluster_key_slot(const char *key, size_t len)
{
	return ec_key_slot(key, len);
}

static void
conn_drop(int i)
{
	ec_conn_close(conns[i].conn);
	conns[i].conn = NULL;
	conns[i].nsent = 0;
}

void
ec_cluster_reset(void)
{
	for (int i = 0; i < nconns; i++)
		conn_drop(i);
	nconns = 0;
	if (active)
	{
		active = false;
		publish_status(NULL);
	}
}

/* The connection slot of host:port, added if new; -1 if the table is full. */
static int
get_conn(const char *host, int port)
{
	for (int i = 0; i < nconns; i++)
		if (conns[i].port == port && strcmp(conns[i].host, host) == 0)
			return i;
	if (nconns >= MAX_CONNS || strlen(host) >= EC_CLUSTER_HOST_MAX)
		return -1;
	strlcpy(conns[nconns].host, host, EC_CLUSTER_HOST_MAX);
	conns[nconns].port = port;
	conns[nconns].conn = NULL;
	conns[nconns].nsent = 0;
	return nconns++;
}

static bool
conn_ready(int i, StringInfo err)
{
	if (conns[i].conn == NULL)
		conns[i].conn = ec_redis_open_node(conns[i].host, conns[i].port, err);
	return conns[i].conn != NULL;
}

/*
 * Forget the connections to nodes that are no longer primaries of the map
 * (replaced nodes, demoted primaries, old redirection targets), so that the
 * table does not fill up over months of failovers.  Only between runs:
 * command targets are connection indexes.
 */
static void
prune_conns(void)
{
	int			kept = 0;

	if (!active || nconns <= map->nnodes + nseeds)
		return;
	for (int i = 0; i < nconns; i++)
	{
		if (ec_cluster_find_node(map, conns[i].host, conns[i].port) < 0)
		{
			conn_drop(i);
			continue;
		}
		conns[kept++] = conns[i];
	}
	nconns = kept;
}

/* Ask one node for the slot map; true once map holds a new one. */
static bool
load_from(const char *host, int port, StringInfo err)
{
	int			i = get_conn(host, port);
	redisReply *reply;
	const char *perr;
	EcSlotMap  *t;

	if (i < 0 || !conn_ready(i, err))
		return false;
	reply = ec_conn_command(conns[i].conn, 2, (const char *[]) {"CLUSTER", "SLOTS"},
							(size_t[]) {7, 5}, ec_deadline_after(ec_redis_timeout()),
							"Redis CLUSTER SLOTS", err);
	if (reply == NULL)
	{
		conn_drop(i);
		return false;
	}
	perr = ec_cluster_parse_slots(reply, host, spare);
	if (perr)
		appendStringInfo(err, "%s (from %s:%d%s%s)", perr, host, port,
						 reply->type == REDIS_REPLY_ERROR ? ": " : "",
						 reply->type == REDIS_REPLY_ERROR ? reply->str : "");
	freeReplyObject(reply);
	if (perr)
		return false;
	t = map;
	map = spare;
	spare = t;
	map_stale = false;
	active = true;
	publish_status(conns[i].conn);
	return true;
}

/*
 * Reload the map from the first node that answers: the primaries of the
 * current map (a seed may be the node that died), then the URL's hosts in
 * order.
 */
static bool
refresh_map(StringInfo err)
{
	EcClusterNode *known = NULL;
	int			nknown = 0;

	if (active)
	{
		nknown = map->nnodes;
		known = palloc(sizeof(EcClusterNode) * Max(nknown, 1));
		memcpy(known, map->nodes, sizeof(EcClusterNode) * nknown);
	}
	for (int i = 0; i < nknown + nseeds; i++)
	{
		if (i > 0)
			appendStringInfoString(err, "; ");
		if (i < nknown ? load_from(known[i].host, known[i].port, err) :
			load_from(seeds[i - nknown].host, seeds[i - nknown].port, err))
		{
			resetStringInfo(err);
			return true;
		}
	}
	return false;
}

bool
ec_cluster_start(const RedisUrlHost *hosts, int nhosts, StringInfo err)
{
	if (map == NULL)
	{
		map = MemoryContextAlloc(TopMemoryContext, sizeof(EcSlotMap));
		spare = MemoryContextAlloc(TopMemoryContext, sizeof(EcSlotMap));
		conns = MemoryContextAllocZero(TopMemoryContext, sizeof(NodeConn) * MAX_CONNS);
	}
	ec_cluster_reset();
	nseeds = Min(nhosts, EC_URL_MAX_HOSTS);
	memcpy(seeds, hosts, sizeof(RedisUrlHost) * nseeds);
	if (!refresh_map(err))
	{
		ec_cluster_reset();
		return false;
	}
	ereport(LOG,
			(errmsg("entity_cache: Redis Cluster: %d primaries serve %d of 16384 slots",
					map->nnodes, map->nslots)));
	return true;
}

/* The connection a command goes to this round, or -1 (why is in err). */
static int
route(EcRoutedCmd *c, StringInfo err)
{
	int			owner;

	if (c->target >= 0)
		return c->target;
	owner = map->owner[c->slot];
	if (owner == EC_SLOT_UNOWNED)
	{
		resetStringInfo(err);
		appendStringInfo(err, "Redis Cluster: slot %d has no primary", c->slot);
		map_stale = true;
		return -1;
	}
	return get_conn(map->nodes[owner].host, map->nodes[owner].port);
}

/*
 * Append every command that is not done to its node's pipeline, then send
 * them all and collect the replies, every node at once.  True if a node
 * could not be reached.
 */
static bool
send_round(EcRoutedCmd *cmds, int n, StringInfo err)
{
	bool		lost = false;
	EcConn	  **set;
	int			nset = 0;

	for (int i = 0; i < nconns; i++)
	{
		conns[i].nsent = 0;
		conns[i].down = false;
	}
	for (int i = 0; i < n; i++)
	{
		EcRoutedCmd *c = &cmds[i];
		int			k;

		c->sent_on = -1;
		if (c->done || c->failed)
			continue;
		k = route(c, err);
		/* one connection attempt per node and round, not one per command */
		if (k >= 0 && !conns[k].down && !conn_ready(k, err))
			conns[k].down = true;
		if (k < 0 || conns[k].down)
		{
			/* a node down: maybe failed over; ask for the map again */
			c->target = -1;
			map_stale = true;
			lost |= (k >= 0);
			continue;
		}
		if (c->asking)
			ec_conn_append(conns[k].conn, 1, (const char *[]) {"ASKING"}, (size_t[]) {6});
		ec_conn_append(conns[k].conn, c->argc, c->argv, c->argvlen);
		c->sent_on = k;
		conns[k].nsent++;
	}
	/*
	 * Routing may have added connections (a node new to us): size the set
	 * only now.  The transport skips broken ones; their replies are missed
	 * below.
	 */
	set = palloc(sizeof(EcConn *) * Max(nconns, 1));
	for (int k = 0; k < nconns; k++)
		if (conns[k].nsent > 0)
			set[nset++] = conns[k].conn;
	(void) ec_conn_exchange(set, nset, ec_deadline_after(ec_redis_timeout()));
	pfree(set);
	return lost;
}

/*
 * "MOVED 3999 127.0.0.1:6381", from connection k: the connection of the
 * address, or -1.  An empty or "?" host is one the node does not know: the
 * node that sent the reply, as CLUSTER SLOTS means it.
 */
static int
redirect_target(const char *msg, int k)
{
	const char *addr = strchr(msg, ' ');
	const char *colon;
	char		host[EC_CLUSTER_HOST_MAX];
	int			port;

	if (addr == NULL || (addr = strchr(addr + 1, ' ')) == NULL)
		return -1;
	addr++;
	colon = strrchr(addr, ':');
	if (colon == NULL || colon - addr >= EC_CLUSTER_HOST_MAX)
		return -1;
	port = atoi(colon + 1);
	if (port < 1 || port > 65535)
		return -1;
	memcpy(host, addr, colon - addr);
	host[colon - addr] = '\0';
	if (host[0] == '\0' || strcmp(host, "?") == 0)
		strlcpy(host, conns[k].host, sizeof(host));
	return get_conn(host, port);
}

/*
 * Act on one reply, which it frees (or hands to the command, when it asked
 * to keep it); true if it asks for a pause before the next round.
 */
static bool
take_reply(EcRoutedCmd *c, int k, redisReply *r, StringInfo err)
{
	bool		pause = false;

	c->target = -1;
	if (r->type != REDIS_REPLY_ERROR)
	{
		c->done = true;
		if (c->keep_reply)
		{
			c->reply = r;
			return false;
		}
	}
	else if (strncmp(r->str, "MOVED ", 6) == 0 || strncmp(r->str, "ASK ", 4) == 0)
	{
		c->target = redirect_target(r->str, k);
		redirections++;
		/* a MOVED means the map is out of date; an ASK does not */
		if (r->str[1] == 'S' && c->target >= 0)
			c->asking = true;
		else
			map_stale = true;
	}
	else
	{
		resetStringInfo(err);
		appendStringInfo(err, "Redis Cluster replied with an error: %s", r->str);
		if (strncmp(r->str, "TRYAGAIN", 8) == 0 || strncmp(r->str, "CLUSTERDOWN", 11) == 0 ||
			strncmp(r->str, "LOADING", 7) == 0 || strncmp(r->str, "MASTERDOWN", 10) == 0)
			pause = true;
		else
			c->failed = true;
	}
	freeReplyObject(r);
	return pause;
}

/*
 * Read every reply of the round, connection by connection, in order.  True
 * if a node was lost or asked for a pause.
 */
static bool
read_round(EcRoutedCmd *cmds, int n, StringInfo err)
{
	bool		pause = false;

	for (int k = 0; k < nconns; k++)
	{
		EcConn	   *conn = conns[k].conn;

		for (int i = 0; i < n && conns[k].nsent > 0; i++)
		{
			EcRoutedCmd *c = &cmds[i];
			redisReply *r;

			if (c->sent_on != k)
				continue;
			c->sent_on = -1;
			r = ec_conn_take_reply(conn);
			/* the reply to ASKING comes first; the command's own tells */
			if (r != NULL && c->asking)
			{
				freeReplyObject(r);
				r = ec_conn_take_reply(conn);
			}
			c->asking = false;
			if (r == NULL)
			{
				/* the connection broke: this and the rest stay undone */
				c->target = -1;
				continue;
			}
			pause |= take_reply(c, k, r, err);
		}
		if (conns[k].nsent > 0 && ec_conn_is_broken(conn))
		{
			resetStringInfo(err);
			appendStringInfo(err, "Redis Cluster node %s:%d: %s", conns[k].host,
							 conns[k].port, ec_conn_error(conn));
			conn_drop(k);
			map_stale = true;
			pause = true;
		}
	}
	return pause;
}

/* Wait ms, ending early only for an interrupt or postmaster death. */
static void
pause_ms(long ms)
{
	(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms, PG_WAIT_EXTENSION);
	CHECK_FOR_INTERRUPTS();
}

bool
ec_cluster_run(EcRoutedCmd *cmds, int n, StringInfo err)
{
	StringInfoData why;
	long		pause = PAUSE_MS;
	bool		all_done = false;

	initStringInfo(&why);
	prune_conns();
	for (int i = 0; i < n; i++)
	{
		cmds[i].done = false;
		cmds[i].failed = false;
		cmds[i].asking = false;
		cmds[i].target = -1;
		cmds[i].sent_on = -1;
		cmds[i].reply = NULL;
	}
	for (int round = 0; round < MAX_ROUNDS; round++)
	{
		bool		lost;
		bool		pending = false;

		if (map_stale)
		{
			StringInfoData rerr;

			/* a failed reload keeps the old map: most of it may be right */
			initStringInfo(&rerr);
			if (!refresh_map(&rerr))
			{
				resetStringInfo(&why);
				appendStringInfoString(&why, rerr.data);
			}
			pfree(rerr.data);
		}
		lost = send_round(cmds, n, &why);
		lost |= read_round(cmds, n, &why);
		all_done = true;
		for (int i = 0; i < n; i++)
		{
			all_done &= cmds[i].done;
			pending |= !cmds[i].done && !cmds[i].failed;
		}
		if (!pending)
			break;
		/* a node lost, or busy (TRYAGAIN, CLUSTERDOWN): give it a moment */
		if (lost)
		{
			pause_ms(pause);
			pause = Min(pause * 2, PAUSE_MAX_MS);
		}
	}
	publish_status(NULL);
	if (!all_done)
		appendStringInfoString(err, why.data[0] ? why.data : "Redis Cluster: commands not acknowledged");
	pfree(why.data);
	return all_done;
}

/*
 * One SCAN page of node k: fn gets the keys matching pattern.  Advances
 * cursor; false with err set on failure.
 */
static bool
scan_page(int k, char *cursor, size_t cursorsize, const char *pattern,
		  size_t len, EcScanPageFn fn, void *arg, StringInfo err)
{
	const char *argv[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT};
	size_t		argvlen[6] = {4, strlen(cursor), 5, len, 5, strlen(SCAN_COUNT)};
	redisReply *reply = ec_conn_command(conns[k].conn, 6, argv, argvlen,
										ec_deadline_after(ec_redis_timeout()),
										"Redis SCAN failed", err);
	redisReply *keys;
	bool		ok;

	if (reply == NULL)
	{
		conn_drop(k);
		map_stale = true;
		return false;
	}
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
		reply->element[0]->type != REDIS_REPLY_STRING ||
		reply->element[0]->len >= cursorsize ||
		reply->element[1]->type != REDIS_REPLY_ARRAY)
	{
		appendStringInfo(err, "Redis SCAN on %s:%d failed: %s", conns[k].host, conns[k].port,
						 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
		freeReplyObject(reply);
		return false;
	}
	memcpy(cursor, reply->element[0]->str, reply->element[0]->len);
	cursor[reply->element[0]->len] = '\0';

	keys = reply->element[1];
	for (size_t i = 0; i < keys->elements; i++)
	{
		if (keys->element[i]->type != REDIS_REPLY_STRING)
		{
			appendStringInfo(err, "Redis SCAN on %s:%d returned a key that is not a string",
							 conns[k].host, conns[k].port);
			freeReplyObject(reply);
			return false;
		}
	}
	ok = keys->elements == 0 || fn(arg, keys, err);
	freeReplyObject(reply);
	return ok;
}

bool
ec_cluster_scan(const char *pattern, size_t len, EcScanPageFn fn, void *arg,
				StringInfo err)
{
	EcClusterNode *nodes;
	int			nnodes;

	if (map_stale && !refresh_map(err))
		return false;
	/* the map may be reloaded while we scan: walk the nodes it had */
	nnodes = map->nnodes;
	nodes = palloc(sizeof(EcClusterNode) * nnodes);
	memcpy(nodes, map->nodes, sizeof(EcClusterNode) * nnodes);
	for (int i = 0; i < nnodes; i++)
	{
		char		cursor[32] = "0";

		do
		{
			/*
			 * Look the connection up for every page: what fn sends may have
			 * dropped it, or pruned the table (connection indexes move).
			 */
			int			k = get_conn(nodes[i].host, nodes[i].port);

			if (k < 0 || !conn_ready(k, err) ||
				!scan_page(k, cursor, sizeof(cursor), pattern, len, fn, arg, err))
			{
				map_stale = true;
				return false;
			}
		} while (strcmp(cursor, "0") != 0);
	}
	return true;
}

/*
 * The generic pipeline (ec_redis_append/ec_redis_read_replies) on a
 * cluster: commands are copied here, then run all at once, routed by their
 * first argument's slot.  Multi-key UNLINK and DEL are split into one
 * command per key (their keys may live in different slots).  All or
 * nothing: for callers that need no per-command acknowledgement.
 */
static MemoryContext pending_cxt = NULL;
static List *pending = NIL;		/* of EcRoutedCmd *, in pending_cxt */

static void
pend(int argc, const char **argv, const size_t *argvlen)
{
	EcRoutedCmd *c = palloc0(sizeof(EcRoutedCmd));
	char	  **v = palloc(sizeof(char *) * argc);
	size_t	   *l = palloc(sizeof(size_t) * argc);

	for (int i = 0; i < argc; i++)
	{
		v[i] = palloc(argvlen[i] + 1);
		memcpy(v[i], argv[i], argvlen[i]);
		v[i][argvlen[i]] = '\0';
		l[i] = argvlen[i];
	}
	c->argc = argc;
	c->argv = (const char **) v;
	c->argvlen = l;
	/* a command without a key goes to the owner of slot 0, any primary */
	c->slot = argc > 1 ? ec_key_slot(argv[1], argvlen[1]) : 0;
	pending = lappend(pending, c);
}

void
ec_cluster_append(int argc, const char **argv, const size_t *argvlen)
{
	MemoryContext old;

	if (pending_cxt == NULL)
		pending_cxt = AllocSetContextCreate(TopMemoryContext, "entity_cache cluster pipeline",
											ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(pending_cxt);
	if (argc > 2 && (pg_strcasecmp(argv[0], "UNLINK") == 0 || pg_strcasecmp(argv[0], "DEL") == 0))
	{
		for (int i = 1; i < argc; i++)
			pend(2, (const char *[]) {argv[0], argv[i]}, (size_t[]) {argvlen[0], argvlen[i]});
	}
	else
		pend(argc, argv, argvlen);
	MemoryContextSwitchTo(old);
}

bool
ec_cluster_read_replies(StringInfo err)
{
	int			n = list_length(pending);
	EcRoutedCmd *cmds;
	bool		ok;
	int			i = 0;
	ListCell   *lc;

	if (n == 0)
		return true;
	cmds = MemoryContextAlloc(pending_cxt, sizeof(EcRoutedCmd) * n);
	foreach(lc, pending)
		cmds[i++] = *(EcRoutedCmd *) lfirst(lc);
	ok = ec_cluster_run(cmds, n, err);
	pending = NIL;
	MemoryContextReset(pending_cxt);
	return ok;
}
