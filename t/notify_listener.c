/*
 * notify_listener: a LISTEN entity_cache client for t/015_notify.pl, as an
 * application instance with an in-process cache would run it.  libpq and
 * hiredis, built by the test.
 *
 *   notify_listener CONNINFO REDIS_HOST REDIS_PORT listen IDLE_MS MAX
 *	   LISTEN, print "ready", then print each payload on a line of its own;
 *	   exit after MAX payloads or IDLE_MS without one.
 *
 *   notify_listener CONNINFO REDIS_HOST REDIS_PORT race N
 *	   A writer thread, for i in 1..N: SET entity:metadata:r<i> to "old",
 *	   then UPDATE app.entity SET label = 'new' WHERE code = 'r<i>'.  The
 *	   listener, on each notification of such a key, GETs it at once from
 *	   Redis, as a refilling cache would; a value of "old" is a stale
 *	   read.  Prints "notified <keys heard> stale <stale reads>" once all N
 *	   keys were heard or after 60 s.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

static const char *conninfo;
static const char *redis_host;
static int	redis_port;

static void
die(const char *what, const char *detail)
{
	fprintf(stderr, "notify_listener: %s: %s\n", what, detail ? detail : "");
	exit(2);
}

static PGconn *
pg_connect(void)
{
	PGconn	   *c = PQconnectdb(conninfo);

	if (PQstatus(c) != CONNECTION_OK)
		die("connect", PQerrorMessage(c));
	return c;
}

static redisContext *
redis_connect(void)
{
	redisContext *r = redisConnect(redis_host, redis_port);

	if (r == NULL || r->err)
		die("redis connect", r ? r->errstr : "out of memory");
	return r;
}

static void
exec_ok(PGconn *c, const char *sql)
{
	PGresult   *res = PQexec(c, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		die(sql, PQerrorMessage(c));
	PQclear(res);
}

/* Wait up to ms for input on the listening connection. */
static int
wait_input(PGconn *c, long ms)
{
	fd_set		fds;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	int			sock = PQsocket(c);

	FD_ZERO(&fds);
	FD_SET(sock, &fds);
	if (select(sock + 1, &fds, NULL, NULL, &tv) < 0)
		die("select", NULL);
	if (!PQconsumeInput(c))
		die("consume", PQerrorMessage(c));
	return 1;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
run_listen(PGconn *c, long idle_ms, long max)
{
	long		n = 0;
	double		last = now_s();

	exec_ok(c, "LISTEN entity_cache");
	printf("ready\n");
	fflush(stdout);
	while (n < max && (now_s() - last) * 1000 < idle_ms)
	{
		PGnotify   *nf;

		wait_input(c, 50);
		while ((nf = PQnotifies(c)) != NULL)
		{
			printf("%s\n", nf->extra);
			fflush(stdout);
			PQfreemem(nf);
			n++;
			last = now_s();
		}
	}
	return 0;
}

static long race_n;

static void *
race_writer(void *arg)
{
	PGconn	   *c = pg_connect();
	redisContext *r = redis_connect();
	for (long i = 1; i <= race_n; i++)
	{
		char		key[64];
		char		code[32];
		const char *params[1] = {code};
		redisReply *rep;
		PGresult   *res;

		snprintf(code, sizeof(code), "r%ld", i);
		snprintf(key, sizeof(key), "entity:metadata:%s", code);
		rep = redisCommand(r, "SET %s old", key);
		if (rep == NULL)
			die("redis SET", r->errstr);
		freeReplyObject(rep);
		res = PQexecParams(c, "UPDATE app.entity SET label = 'new' WHERE code = $1",
						   1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(res), "1") != 0)
			die("UPDATE", PQerrorMessage(c));
		PQclear(res);
	}
	PQfinish(c);
	redisFree(r);
	return NULL;
}

static int
run_race(PGconn *c, long n)
{
	redisContext *r = redis_connect();
	pthread_t	writer;
	char	   *heard = calloc(n + 1, 1);
	long		nheard = 0;
	long		stale = 0;
	double		start;

	exec_ok(c, "LISTEN entity_cache");
	race_n = n;
	if (pthread_create(&writer, NULL, race_writer, NULL) != 0)
		die("pthread_create", NULL);
	start = now_s();
	while (nheard < n && now_s() - start < 60)
	{
		PGnotify   *nf;

		wait_input(c, 50);
		while ((nf = PQnotifies(c)) != NULL)
		{
			long		i;
			redisReply *rep;

			if (sscanf(nf->extra, "entity:metadata:r%ld", &i) == 1 && i >= 1 && i <= n)
			{
				/* refill as a cache-aside reader would: read Redis at once */
				rep = redisCommand(r, "GET %s", nf->extra);
				if (rep == NULL)
					die("redis GET", r->errstr);
				if (rep->type == REDIS_REPLY_STRING && strcmp(rep->str, "old") == 0)
					stale++;
				freeReplyObject(rep);
				if (!heard[i])
					nheard++;
				heard[i] = 1;
			}
			PQfreemem(nf);
		}
	}
	pthread_join(writer, NULL);
	printf("notified %ld stale %ld\n", nheard, stale);
	redisFree(r);
	free(heard);
	return 0;
}

int
main(int argc, char **argv)
{
	PGconn	   *c;

	if (argc < 6)
		die("usage", "CONNINFO REDIS_HOST REDIS_PORT listen IDLE_MS MAX | race N");
	conninfo = argv[1];
	redis_host = argv[2];
	redis_port = atoi(argv[3]);
	c = pg_connect();
	if (strcmp(argv[4], "listen") == 0 && argc == 7)
		return run_listen(c, atol(argv[5]), atol(argv[6]));
	if (strcmp(argv[4], "race") == 0)
		return run_race(c, atol(argv[5]));
	die("usage", argv[4]);
	return 2;
}
