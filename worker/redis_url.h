/*-------------------------------------------------------------------------
 *
 * redis_url.h
 *	  Parse entity_cache.redis_url.
 *
 * Plain C, no allocation, no PostgreSQL dependency: the GUC check hook,
 * the password masking of SHOW, the worker and the fuzzer share it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_REDIS_URL_H
#define EC_REDIS_URL_H

#include <stdbool.h>
#include <stddef.h>

#define EC_URL_HOST_MAX 256
#define EC_URL_PATH_MAX 1024
#define EC_URL_USER_MAX 256
#define EC_URL_PASSWORD_MAX 512
#define EC_URL_MASTER_MAX 256
#define EC_URL_MAX_HOSTS 16

typedef struct RedisUrlHost
{
	char		host[EC_URL_HOST_MAX];	/* name or IP, no brackets */
	int			port;
} RedisUrlHost;

typedef struct RedisUrl
{
	bool		is_unix;
	bool		tls;			/* rediss:// or rediss-sentinel:// */
	bool		sentinel;		/* hosts are sentinels, master names the set */
	int			nhosts;			/* TCP: 1..EC_URL_MAX_HOSTS, tried in order */
	RedisUrlHost hosts[EC_URL_MAX_HOSTS];
	char		path[EC_URL_PATH_MAX];	/* unix: socket path */
	char		user[EC_URL_USER_MAX];	/* empty: no ACL user */
	char		password[EC_URL_PASSWORD_MAX];	/* empty: no AUTH */
	char		master[EC_URL_MASTER_MAX];	/* sentinel: the master's name */
	int			db;

	/*
	 * Where the password sits in the URL text, percent-encoded, so that it
	 * can be masked: password_len == 0 when the URL carries none.
	 */
	size_t		password_off;
	size_t		password_len;
} RedisUrl;

/*
 * Accepted forms:
 *	 redis://[user[:password]@]host[:port][,host[:port]...][/db]
 *	 rediss://...                 (the same, over TLS)
 *	 redis-sentinel://[user[:password]@]host[:port][,host[:port]...][/db]?master=NAME
 *	 rediss-sentinel://...        (TLS to the sentinels and the master)
 *	 unix:///absolute/path.sock[?db=N]
 * user, password and master may be percent-encoded; IPv6 addresses go in
 * brackets.  Ports default to 6379 (26379 for sentinels).  Returns NULL on
 * success, otherwise a static message saying what is wrong.
 */
extern const char *redis_url_parse(const char *url, RedisUrl *out);

#endif							/* EC_REDIS_URL_H */
