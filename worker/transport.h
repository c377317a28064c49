/*-------------------------------------------------------------------------
 *
 * transport.h
 *	  Our own Redis transport: a connection object over TCP (IPv4/IPv6),
 *	  a unix socket or TLS (OpenSSL), with hiredis used for the protocol
 *	  only (redisFormatCommandArgv to encode, redisReader to parse).  No
 *	  redisContext.
 *
 * One process may hold connections to several Redis nodes at once and
 * pipeline to all of them in parallel:
 *
 *		EcConn *a = ec_conn_open(&target_a, ec_deadline_after(timeout_ms), err);
 *		EcConn *b = ec_conn_open(&target_b, ec_deadline_after(timeout_ms), err);
 *		ec_conn_append(a, argc, argv, argvlen);		-- any number, any conn
 *		ec_conn_append(b, argc, argv, argvlen);
 *		EcConn *set[2] = {a, b};
 *		ec_conn_exchange(set, 2, ec_deadline_after(timeout_ms));
 *		while ((reply = ec_conn_take_reply(a)) != NULL) ... freeReplyObject(reply);
 *		while ((reply = ec_conn_take_reply(b)) != NULL) ... freeReplyObject(reply);
 *
 * (ec_redis_open_node() in redis_client.h opens a node and authenticates
 * it with the worker's URL credentials, TLS settings and timeout.)
 *
 * ec_conn_exchange() polls every connection of the set at once: it writes
 * each one's output buffer and reads until each has the replies of all
 * the commands appended to it, or the deadline passes.  A connection that
 * fails (I/O error, protocol error, deadline) is marked broken with its
 * own message (ec_conn_error()) without disturbing the others; replies it
 * already received stay readable, in order.  A broken connection must be
 * closed: its stream may hold half a reply.
 *
 * Replies are hiredis redisReply objects owned by the caller once taken
 * (free them with freeReplyObject).  Error replies (-ERR, -MOVED, -ASK,
 * -READONLY...) are ordinary replies of type REDIS_REPLY_ERROR: the
 * transport does not interpret them.
 *
 * Memory: each connection lives in its own memory context under
 * TopMemoryContext; ec_conn_close() frees everything, including replies
 * not yet taken.  Everything here is bounded by the caller's deadline,
 * except the host name lookup (getaddrinfo), which the system bounds.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_TRANSPORT_H
#define EC_TRANSPORT_H

#include "lib/stringinfo.h"

#include <hiredis/hiredis.h>

typedef struct EcConn EcConn;

/* how a TLS connection checks the server (entity_cache.redis_tls_verify) */
typedef enum EcTlsVerify
{
	EC_TLS_VERIFY_FULL,			/* chain and host name or IP address */
	EC_TLS_VERIFY_CA,			/* chain only */
	EC_TLS_VERIFY_NONE			/* nothing: encryption without authentication */
} EcTlsVerify;

/* TLS settings; empty strings mean "not set" */
typedef struct EcTlsSettings
{
	const char *ca_file;		/* empty: the system trust store */
	const char *cert_file;		/* client certificate, for mutual TLS */
	const char *key_file;		/* its private key */
	EcTlsVerify verify;
} EcTlsSettings;

/*
 * A TLS client context: trust store, client certificate and verification
 * mode, loaded once and shared by every connection made with it (so one
 * reload reads the files once, not once per node).
 */
typedef struct EcTlsContext EcTlsContext;

/* NULL with err set if a file cannot be loaded (the message names it) */
extern EcTlsContext *ec_tls_context_create(const EcTlsSettings *settings,
										   StringInfo err);
extern void ec_tls_context_free(EcTlsContext *tlsctx);

/* where to connect */
typedef struct EcTarget
{
	const char *host;			/* TCP: name or IP address (no brackets) */
	int			port;
	const char *unix_path;		/* non-NULL and non-empty: a unix socket */
	EcTlsContext *tls;			/* non-NULL: TLS (TCP only) */
} EcTarget;

/* Deadlines are milliseconds of a monotonic clock. */
typedef int64 EcDeadline;
extern EcDeadline ec_deadline_after(int timeout_ms);

/*
 * Connect (and, for TLS, complete the handshake) before the deadline.
 * NULL with a message in err on failure; every address of the host is
 * tried in turn.
 */
extern EcConn *ec_conn_open(const EcTarget *target, EcDeadline deadline,
							StringInfo err);
extern void ec_conn_close(EcConn *conn);

/* Queue a command in the connection's output buffer; one reply expected. */
extern void ec_conn_append(EcConn *conn, int argc, const char **argv,
						   const size_t *argvlen);

/*
 * Send every queued command and read every expected reply, on all n
 * connections at once.  True when all of them got all their replies;
 * false if any broke (see ec_conn_is_broken/ec_conn_error).  Broken or
 * NULL entries in the set are skipped.
 */
extern bool ec_conn_exchange(EcConn **conns, int n, EcDeadline deadline);

/* The next reply received, in command order; NULL when none is left. */
extern redisReply *ec_conn_take_reply(EcConn *conn);

/* Replies still expected (commands appended, replies not yet received). */
extern int	ec_conn_pending(const EcConn *conn);

/*
 * One command, synchronously: append + exchange + take.  NULL with err
 * set (prefixed with "what") on an I/O failure, which breaks the
 * connection; an error reply is returned like any other.
 */
extern redisReply *ec_conn_command(EcConn *conn, int argc, const char **argv,
								   const size_t *argvlen, EcDeadline deadline,
								   const char *what, StringInfo err);

extern bool ec_conn_is_broken(const EcConn *conn);
extern const char *ec_conn_error(const EcConn *conn);	/* "" if none */

/* "host:port", "[v6]:port" or the socket path, for status and messages */
extern const char *ec_conn_node(const EcConn *conn);
extern bool ec_conn_is_tls(const EcConn *conn);

#endif							/* EC_TRANSPORT_H */
