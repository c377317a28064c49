/*-------------------------------------------------------------------------
 *
 * redis_client.h
 *	  The worker's one Redis connection, over hiredis.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_REDIS_CLIENT_H
#define EC_REDIS_CLIENT_H

#include "lib/stringinfo.h"

extern bool ec_redis_connect(const char *url, const char *password_override,
							 int timeout_ms, StringInfo err);
extern void ec_redis_disconnect(void);
extern bool ec_redis_is_connected(void);

/* Pipelining: append commands, then read all their replies in one go. */
extern void ec_redis_append(int argc, const char **argv, const size_t *argvlen);
extern bool ec_redis_read_replies(StringInfo err);

/* SCAN MATCH pattern + UNLINK of what matches; adds to *nkeys. */
extern bool ec_redis_flush_pattern(const char *pattern, size_t len,
								   uint64 *nkeys, StringInfo err);

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

#endif							/* EC_REDIS_CLIENT_H */
