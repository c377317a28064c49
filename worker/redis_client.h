/*-------------------------------------------------------------------------
 *
 * redis_client.h
 *	  The worker's Redis connection, over our transport (transport.h):
 *	  the URL's node(s), AUTH and SELECT, pipelining, pattern flushes.
 *
 * The connection made by ec_redis_connect() is the "current" one, used by
 * append/read_replies/flush_pattern.  ec_redis_open_node() opens further
 * connections to other nodes with the same credentials, TLS settings and
 * timeout (e.g. the nodes of a Redis Cluster), driven with transport.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_REDIS_CLIENT_H
#define EC_REDIS_CLIENT_H

#include "lib/stringinfo.h"

#include "transport.h"

extern bool ec_redis_connect(const char *url, const char *password_override,
							 int timeout_ms, StringInfo err);
extern void ec_redis_disconnect(void);
/* status.redis_node and redis_tls (the worker only); NULL: not connected */
extern void ec_redis_publish_node(EcConn *c);
extern bool ec_redis_is_connected(void);

/* Pipelining: append commands, then read all their replies in one go. */
extern void ec_redis_append(int argc, const char **argv, const size_t *argvlen);
extern bool ec_redis_read_replies(StringInfo err);

/* SCAN MATCH pattern + UNLINK of what matches. */
extern bool ec_redis_flush_pattern(const char *pattern, size_t len, StringInfo err);

/*
 * For verify() (a backend's own connection): GET each of n keys in one
 * pipelined round trip; values[i] is a palloc'd copy (vlens[i] its length)
 * or NULL when the key does not exist.
 */
extern bool ec_redis_get_many(int n, const char *const *keys, const size_t *keylens,
							  char **values, size_t *vlens, StringInfo err);

/* SCAN MATCH pattern, calling cb for every key found (duplicates possible). */
typedef void (*EcScanFn) (void *arg, const char *key, size_t len);
extern bool ec_redis_scan(const char *pattern, size_t len, EcScanFn cb, void *arg,
						  StringInfo err);
/* The current connection (NULL when disconnected), for transport.h calls. */
extern EcConn *ec_redis_conn(void);

/*
 * Open a connection to host:port with the settings of the last
 * ec_redis_connect(): TLS, AUTH, SELECT, timeout.  NULL with err set.
 * The caller owns it (ec_conn_close).
 */
extern EcConn *ec_redis_open_node(const char *host, int port, StringInfo err);

/*
 * True when a TLS or Sentinel setting differs from those of the last
 * ec_redis_connect(): the worker then reconnects, as for a new URL.
 */
extern bool ec_redis_tls_settings_changed(void);

/* entity_cache.redis_timeout of the last ec_redis_connect() */
extern int	ec_redis_timeout(void);

#endif							/* EC_REDIS_CLIENT_H */
