/*-------------------------------------------------------------------------
 *
 * redis_client.h
 *	  The worker's one Redis connection, over hiredis.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_REDIS_CLIENT_H
#define EC_REDIS_CLIENT_H

#include <hiredis/hiredis.h>

#include "lib/stringinfo.h"

extern bool ec_redis_connect(const char *url, const char *password_override,
							 int timeout_ms, StringInfo err);
extern void ec_redis_disconnect(void);
extern bool ec_redis_is_connected(void);

/*
 * One more connection with the credentials and timeout of the last
 * ec_redis_connect() (cluster nodes); path for a unix socket, else host.
 */
extern redisContext *ec_redis_open(const char *host, int port, const char *path,
								   int db, StringInfo err);

/* Pipelining: append commands, then read all their replies in one go. */
extern void ec_redis_append(int argc, const char **argv, const size_t *argvlen);
extern bool ec_redis_read_replies(StringInfo err);

/* SCAN MATCH pattern + UNLINK of what matches; adds to *nkeys. */
extern bool ec_redis_flush_pattern(const char *pattern, size_t len,
								   uint64 *nkeys, StringInfo err);

#endif							/* EC_REDIS_CLIENT_H */
