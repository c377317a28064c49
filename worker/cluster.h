/*-------------------------------------------------------------------------
 *
 * cluster.h
 *	  Redis Cluster: slot map, one connection per node, commands routed to
 *	  the primary of their key's slot, redirections followed.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_CLUSTER_H
#define EC_CLUSTER_H

#include "lib/stringinfo.h"

struct redisReply;

/*
 * One command for the node that owns slot.  The caller fills argc, argv,
 * argvlen and slot (every key of the command must be in that slot), and
 * keep_reply to get the owner's reply (e.g. of a GET) in reply, to free
 * with freeReplyObject; ec_cluster_run() sets done once that node
 * acknowledged it.
 */
typedef struct EcRoutedCmd
{
	int			argc;
	const char **argv;
	const size_t *argvlen;
	int			slot;
	bool		keep_reply;
	bool		done;
	struct redisReply *reply;	/* with keep_reply, once done */
	/* private to cluster.c */
	int			target;			/* connection of a redirection, or -1 */
	bool		asking;			/* send ASKING first (an ASK redirection) */
	bool		failed;			/* an error reply no retry can cure */
	int			sent_on;		/* connection it went out on, or -1 */
} EcRoutedCmd;

/*
 * Take over from a node of the URL that reported cluster_enabled:1: load
 * the map from the first of the URL's hosts (the seeds) that answers.
 */
struct RedisUrlHost;
extern bool ec_cluster_start(const struct RedisUrlHost *seeds, int nseeds,
							 StringInfo err);
extern void ec_cluster_reset(void);
extern bool ec_cluster_active(void);

/* The slot of a key (cluster_slots.c), for callers that build commands. */
extern int	ec_cluster_key_slot(const char *key, size_t len);

/*
 * Send every command to its node, one pipeline per node, all nodes in
 * flight at once; follow MOVED and ASK, retry TRYAGAIN and CLUSTERDOWN
 * after a pause.  True when every command is done; otherwise err says why
 * and the done flags say which were acknowledged.
 */
extern bool ec_cluster_run(EcRoutedCmd *cmds, int n, StringInfo err);

/*
 * ec_redis_append/ec_redis_read_replies on a cluster: each command (each
 * key of a multi-key UNLINK or DEL) routed by the slot of its first
 * argument; true only when every one was acknowledged.
 */
extern void ec_cluster_append(int argc, const char **argv, const size_t *argvlen);
extern bool ec_cluster_read_replies(StringInfo err);

/*
 * A page of SCAN MATCH keys (an array reply of strings, valid only during
 * the call); false with err set stops the scan.  redis_client.c's page
 * readers (UNLINK them, hand each to a callback) serve one node and a
 * cluster alike.
 */
typedef bool (*EcScanPageFn) (void *arg, const struct redisReply *keys, StringInfo err);

/* SCAN MATCH pattern on every primary, each page to fn */
extern bool ec_cluster_scan(const char *pattern, size_t len, EcScanPageFn fn,
							void *arg, StringInfo err);

#endif							/* EC_CLUSTER_H */
