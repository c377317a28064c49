/*-------------------------------------------------------------------------
 *
 * redis_url.h
 *	  Parse entity_cache.redis_url.
 *
 * Plain C, no allocation, no PostgreSQL dependency: the GUC check hook,
 * the worker and the fuzzer share it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_REDIS_URL_H
#define EC_REDIS_URL_H

#include <stdbool.h>

#define EC_URL_HOST_MAX 256
#define EC_URL_PATH_MAX 1024
#define EC_URL_USER_MAX 256
#define EC_URL_PASSWORD_MAX 512

typedef struct RedisUrl
{
	bool		is_unix;
	char		host[EC_URL_HOST_MAX];	/* TCP: host name or IP, no brackets */
	int			port;
	char		path[EC_URL_PATH_MAX];	/* unix: socket path */
	char		user[EC_URL_USER_MAX];	/* empty: no ACL user */
	char		password[EC_URL_PASSWORD_MAX];	/* empty: no AUTH */
	int			db;
} RedisUrl;

/*
 * Accepted forms:
 *	 redis://[user[:password]@]host[:port][/db]
 *	 unix:///absolute/path.sock[?db=N]
 * user and password may be percent-encoded.  Returns NULL on success,
 * otherwise a static message saying what is wrong.
 */
extern const char *redis_url_parse(const char *url, RedisUrl *out);

#endif							/* EC_REDIS_URL_H */
