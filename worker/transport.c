/*-------------------------------------------------------------------------
 *
 * transport.c
 *	  Connections to Redis nodes: non-blocking connect, output buffers of
 *	  commands formatted by hiredis, replies parsed by hiredis' redisReader,
 *	  and one poll() loop that drives every connection of a set at once.
 *
 * Sockets are non-blocking from the start, so no single call can stall
 * the worker past its deadline: a Redis that stops reading or answering
 * costs one timeout.  Reading goes on while the output buffer drains,
 * because a server blocked on sending us replies would otherwise stop
 * reading our commands (both sides' buffers full: a deadlock).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "miscadmin.h"
#include "utils/memutils.h"

#include "transport_tls.h"

#define NODE_MAX 300
#define READ_CHUNK 16384

struct EcConn
{
	MemoryContext cxt;			/* everything of the connection but replies */
	int			fd;
	EcTls	   *tls;			/* NULL: plaintext */
	char		node[NODE_MAX];
	StringInfoData out;			/* formatted commands not yet sent */
	size_t		out_sent;		/* bytes of out already written */
	redisReader *reader;
	int			expected;		/* replies not yet received */
	redisReply **replies;		/* received, not yet taken: [first, count) */
	int			first;
	int			count;
	int			cap;
	bool		got_data;		/* anything received yet */
	bool		broken;
	char		error[512];
};

EcDeadline
ec_deadline_after(int timeout_ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + timeout_ms;
}

/* milliseconds left before the deadline, at least 0 */
static int
ms_left(EcDeadline deadline)
{
	int64		left = deadline - ec_deadline_after(0);

	return left <= 0 ? 0 : (int) Min(left, INT_MAX);
}

/* Mark the connection unusable; the first message is kept. */
static void
conn_fail(EcConn *conn, const char *fmt,...) pg_attribute_printf(2, 3);

static void
conn_fail(EcConn *conn, const char *fmt,...)
{
	va_list		ap;

	if (conn->broken)
		return;
	conn->broken = true;
	va_start(ap, fmt);
	vsnprintf(conn->error, sizeof(conn->error), fmt, ap);
	va_end(ap);
}

/*
 * Wait until fd is ready for events or the deadline passes: 1 ready,
 * 0 timed out.  Signals (a reload, SIGTERM) interrupt poll(); interrupts
 * are served and the wait goes on with the time that is left.
 */
int
ec_wait_fd(int fd, short events, EcDeadline deadline)
{
	for (;;)
	{
		struct pollfd pfd = {.fd = fd,.events = events};
		int			rc = poll(&pfd, 1, ms_left(deadline));

		if (rc > 0)
			return 1;
		if (rc == 0)
			return 0;
		if (errno != EINTR)
			return 1;			/* let the next I/O call report the error */
		CHECK_FOR_INTERRUPTS();
	}
}

/* Non-blocking connect of one address; fd or -1 with err set. */
static int
connect_addr(const struct sockaddr *addr, socklen_t addrlen, int family,
			 const char *node, EcDeadline deadline, StringInfo err)
{
	int			fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int			soerr = 0;
	socklen_t	len = sizeof(soerr);

	if (fd < 0)
	{
		appendStringInfo(err, "could not create a socket for Redis at %s: %m", node);
		return -1;
	}
	if (connect(fd, addr, addrlen) != 0)
	{
		/* a unix socket's EAGAIN is a full backlog, not a connect in progress */
		if (errno != EINPROGRESS)
			soerr = errno;
		else if (!ec_wait_fd(fd, POLLOUT, deadline))
		{
			appendStringInfo(err, "could not connect to Redis at %s: timed out", node);
			close(fd);
			return -1;
		}
		else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
			soerr = errno;
	}
	if (soerr != 0)
	{
		appendStringInfo(err, "could not connect to Redis at %s: %s", node, strerror(soerr));
		close(fd);
		return -1;
	}
	if (family != AF_UNIX)
	{
		int			one = 1;

		/* small pipelined commands must not wait for Nagle */
		(void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		(void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	}
	return fd;
}

static int
connect_unix(const char *path, EcDeadline deadline, StringInfo err)
{
	struct sockaddr_un sun;

	if (strlen(path) >= sizeof(sun.sun_path))
	{
		appendStringInfo(err, "the Redis socket path \"%s\" is too long", path);
		return -1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strlcpy(sun.sun_path, path, sizeof(sun.sun_path));
	return connect_addr((struct sockaddr *) &sun, sizeof(sun), AF_UNIX, path,
						deadline, err);
}

/* Try every address of host in turn; the first that connects wins. */
static int
connect_tcp(const char *host, int port, const char *node,
			EcDeadline deadline, StringInfo err)
{
	struct addrinfo hints;
	struct addrinfo *res;
	char		portstr[16];
	int			rc;
	int			fd = -1;
	int			start = err->len;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(portstr, sizeof(portstr), "%d", port);
	rc = getaddrinfo(host, portstr, &hints, &res);
	if (rc != 0)
	{
		appendStringInfo(err, "could not resolve Redis host \"%s\": %s", host,
						 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -1;
	}
	/* only the last address's failure is reported, after what err held */
	for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next)
	{
		err->len = start;
		err->data[start] = '\0';
		fd = connect_addr(ai->ai_addr, ai->ai_addrlen, ai->ai_family, node,
						  deadline, err);
	}
	freeaddrinfo(res);
	return fd;
}

static void
format_node(const EcTarget *target, char *node, size_t size)
{
	if (target->unix_path && target->unix_path[0])
		strlcpy(node, target->unix_path, size);
	else if (strchr(target->host, ':'))
		snprintf(node, size, "[%s]:%d", target->host, target->port);
	else
		snprintf(node, size, "%s:%d", target->host, target->port);
}

EcConn *
ec_conn_open(const EcTarget *target, EcDeadline deadline, StringInfo err)
{
	char		node[NODE_MAX];
	int			fd;
	bool		is_unix = target->unix_path && target->unix_path[0];
	MemoryContext cxt;
	EcConn	   *conn;

	format_node(target, node, sizeof(node));
	if (is_unix)
		fd = connect_unix(target->unix_path, deadline, err);
	else
		fd = connect_tcp(target->host, target->port, node, deadline, err);
	if (fd < 0)
		return NULL;

	cxt = AllocSetContextCreate(TopMemoryContext, "entity_cache Redis connection",
								ALLOCSET_SMALL_SIZES);
	conn = MemoryContextAllocZero(cxt, sizeof(EcConn));
	conn->cxt = cxt;
	conn->fd = fd;
	strlcpy(conn->node, node, sizeof(conn->node));
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		initStringInfo(&conn->out);
		MemoryContextSwitchTo(old);
	}
	conn->reader = redisReaderCreate();
	if (conn->reader == NULL)
	{
		appendStringInfoString(err, "out of memory creating a Redis reply reader");
		ec_conn_close(conn);
		return NULL;
	}

	if (target->tls && !is_unix)
	{
		conn->tls = ec_tls_connect(fd, target->host, target->tls, node,
								   deadline, err);
		if (conn->tls == NULL)
		{
			ec_conn_close(conn);
			return NULL;
		}
	}
	return conn;
}

void
ec_conn_close(EcConn *conn)
{
	if (conn == NULL)
		return;
	if (conn->tls)
		ec_tls_free(conn->tls);
	if (conn->fd >= 0)
		close(conn->fd);
	if (conn->reader)
		redisReaderFree(conn->reader);
	for (int i = conn->first; i < conn->first + conn->count; i++)
		freeReplyObject(conn->replies[i]);
	MemoryContextDelete(conn->cxt);
}

void
ec_conn_append(EcConn *conn, int argc, const char **argv, const size_t *argvlen)
{
	char	   *cmd = NULL;
	long long	len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);

	if (len < 0 || cmd == NULL)
	{
		conn_fail(conn, "out of memory formatting a Redis command");
		return;
	}
	appendBinaryStringInfo(&conn->out, cmd, (int) len);
	free(cmd);
	conn->expected++;
}

int
ec_conn_pending(const EcConn *conn)
{
	return conn->expected;
}

static void
push_reply(EcConn *conn, redisReply *reply)
{
	if (conn->first + conn->count == conn->cap)
	{
		if (conn->first > 0)
		{
			/* slide the untaken ones to the front before growing */
			memmove(conn->replies, conn->replies + conn->first,
					sizeof(redisReply *) * conn->count);
			conn->first = 0;
		}
		if (conn->count == conn->cap)
		{
			conn->cap = Max(64, conn->cap * 2);
			if (conn->replies == NULL)
				conn->replies = MemoryContextAlloc(conn->cxt, sizeof(redisReply *) * conn->cap);
			else
				conn->replies = repalloc(conn->replies, sizeof(redisReply *) * conn->cap);
		}
	}
	conn->replies[conn->first + conn->count++] = reply;
	if (conn->expected > 0)
		conn->expected--;
}

redisReply *
ec_conn_take_reply(EcConn *conn)
{
	redisReply *reply;

	if (conn->count == 0)
		return NULL;
	reply = conn->replies[conn->first++];
	if (--conn->count == 0)
		conn->first = 0;
	return reply;
}

/* Raw I/O, plaintext or TLS: >0 bytes, 0 would block (*want set), -1 failed. */
static ssize_t
conn_send(EcConn *conn, const char *buf, size_t len, short *want)
{
	ssize_t		n;

	if (conn->tls)
		return ec_tls_send(conn->tls, buf, len, want, conn->error, sizeof(conn->error));
	n = send(conn->fd, buf, len, MSG_NOSIGNAL);
	if (n >= 0)
		return n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
	{
		*want = POLLOUT;
		return 0;
	}
	snprintf(conn->error, sizeof(conn->error), "%m");
	return -1;
}

static ssize_t
conn_recv(EcConn *conn, char *buf, size_t len, short *want)
{
	ssize_t		n;

	if (conn->tls)
		return ec_tls_recv(conn->tls, buf, len, want, conn->error, sizeof(conn->error));
	n = recv(conn->fd, buf, len, 0);
	if (n > 0)
		return n;
	if (n == 0 || errno == ECONNRESET)
	{
		/* a TLS-only server drops a plaintext client at its first command */
		snprintf(conn->error, sizeof(conn->error), "%s%s",
				 n == 0 ? "the server closed the connection" : "connection reset by peer",
				 conn->got_data ? "" : " before answering (a TLS-only Redis behind redis://? use rediss://)");
		return -1;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
	{
		*want = POLLIN;
		return 0;
	}
	snprintf(conn->error, sizeof(conn->error), "%m");
	return -1;
}

/* Write what the socket takes; the poll events still needed, or -1. */
static int
step_write(EcConn *conn)
{
	while (conn->out_sent < (size_t) conn->out.len)
	{
		short		want = 0;
		ssize_t		n = conn_send(conn, conn->out.data + conn->out_sent,
								  conn->out.len - conn->out_sent, &want);

		if (n < 0)
			return -1;
		if (n == 0)
			return want;
		conn->out_sent += n;
	}
	resetStringInfo(&conn->out);
	conn->out_sent = 0;
	return 0;
}

/* Read and parse what has arrived; the poll events still needed, or -1. */
static int
step_read(EcConn *conn)
{
	char		buf[READ_CHUNK];

	while (conn->expected > 0)
	{
		short		want = 0;
		ssize_t		n = conn_recv(conn, buf, sizeof(buf), &want);
		void	   *reply;

		if (n < 0)
			return -1;
		if (n == 0)
			return want;
		/* a TLS record (alert 0x15, handshake 0x16) where RESP was due */
		if (!conn->got_data && !conn->tls && (buf[0] == 0x15 || buf[0] == 0x16))
		{
			snprintf(conn->error, sizeof(conn->error),
					 "the server answered with TLS (a TLS Redis behind redis://? use rediss://)");
			return -1;
		}
		conn->got_data = true;
		if (redisReaderFeed(conn->reader, buf, n) != REDIS_OK)
			goto protocol_error;
		for (;;)
		{
			if (redisReaderGetReply(conn->reader, &reply) != REDIS_OK)
				goto protocol_error;
			if (reply == NULL)
				break;
			push_reply(conn, reply);
		}
	}
	return 0;

protocol_error:
	snprintf(conn->error, sizeof(conn->error), "protocol error: %s",
			 conn->reader->errstr[0] ? conn->reader->errstr : "unreadable reply");
	return -1;
}

/* One round of I/O on conn: the poll events it waits for, 0 when done. */
static short
conn_step(EcConn *conn)
{
	int			w;
	int			r;
	char		cause[sizeof(conn->error)];

	w = step_write(conn);
	r = (w < 0) ? -1 : step_read(conn);
	if (w < 0 || r < 0)
	{
		strlcpy(cause, conn->error, sizeof(cause));
		conn->error[0] = '\0';
		conn_fail(conn, "connection to Redis at %s failed: %s", conn->node, cause);
		return 0;
	}
	return (short) (w | r);
}

bool
ec_conn_exchange(EcConn **conns, int n, EcDeadline deadline)
{
	struct pollfd *pfds = palloc(sizeof(struct pollfd) * Max(n, 1));
	EcConn	  **waiting = palloc(sizeof(EcConn *) * Max(n, 1));
	bool		ok = true;

	for (;;)
	{
		int			nwait = 0;
		int			rc;

		for (int i = 0; i < n; i++)
		{
			EcConn	   *c = conns[i];
			short		events;

			if (c == NULL || c->broken)
				continue;
			events = conn_step(c);
			if (events == 0)
				continue;
			pfds[nwait].fd = c->fd;
			pfds[nwait].events = events;
			pfds[nwait].revents = 0;
			waiting[nwait++] = c;
		}
		if (nwait == 0)
			break;
		if (ms_left(deadline) == 0)
		{
			for (int i = 0; i < nwait; i++)
				conn_fail(waiting[i], "Redis at %s timed out: no answer within entity_cache.redis_timeout",
						  waiting[i]->node);
			break;
		}
		rc = poll(pfds, nwait, ms_left(deadline));
		if (rc < 0 && errno == EINTR)
			CHECK_FOR_INTERRUPTS();
	}
	for (int i = 0; i < n; i++)
		if (conns[i] != NULL && conns[i]->broken)
			ok = false;
	pfree(pfds);
	pfree(waiting);
	return ok;
}

redisReply *
ec_conn_command(EcConn *conn, int argc, const char **argv,
				const size_t *argvlen, EcDeadline deadline,
				const char *what, StringInfo err)
{
	redisReply *reply;

	/* replies of earlier commands are not this command's */
	Assert(conn->expected == 0 && conn->count == 0);
	ec_conn_append(conn, argc, argv, argvlen);
	if (!ec_conn_exchange(&conn, 1, deadline))
	{
		appendStringInfo(err, "%s: %s", what, conn->error);
		return NULL;
	}
	reply = ec_conn_take_reply(conn);
	Assert(reply != NULL);
	return reply;
}

bool
ec_conn_is_broken(const EcConn *conn)
{
	return conn->broken;
}

const char *
ec_conn_error(const EcConn *conn)
{
	return conn->error;
}

const char *
ec_conn_node(const EcConn *conn)
{
	return conn->node;
}

bool
ec_conn_is_tls(const EcConn *conn)
{
	return conn->tls != NULL;
}
