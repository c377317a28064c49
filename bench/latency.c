/*
 * latency.c: commit -> key-gone latency of entity_cache, at a paced rate of
 * single-row UPDATEs.  Built and run by bench/latency, which starts the
 * servers; see bench/README.md for the method.
 *
 *   latency CONNINFO REDIS_HOST REDIS_PORT RATE DURATION WARMUP WRITERS ROWS
 *
 * Writers (one thread and one PostgreSQL + one Redis connection each) share
 * one schedule: update number k is due at start + k / RATE and goes to
 * writer k % WRITERS.  For each update a writer
 *   1. SETs the row's cache key in Redis (the reader's cache-aside fill),
 *   2. marks the key as pending with its sample number,
 *   3. runs the UPDATE (autocommit) and notes when it returned: t_commit.
 * A subscriber thread listens to Redis keyevent notifications for "del"
 * (UNLINK and DEL both publish it, only for a key that existed) and notes
 * when the key's deletion arrived: t_gone.  Latency = t_gone - t_commit,
 * both from CLOCK_MONOTONIC in this one process.  Each writer cycles through
 * its own slice of the rows, so a key is updated again only ROWS / RATE
 * seconds later, long after its previous deletion.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#define KEY_PREFIX "entity:metadata:entity_"

typedef struct Sample
{
	int			id;
	double		t_sched;		/* when it was due */
	double		t_sent;			/* UPDATE sent */
	double		t_commit;		/* UPDATE (autocommit) returned */
	_Atomic double t_gone;		/* del event received; 0 = not yet */
} Sample;

static const char *conninfo;
static const char *redis_host;
static int	redis_port;
static double rate;
static double duration;
static double warmup;
static int	nwriters;
static int	nrows;

static double t_start;
static long nsamples_max;
static Sample *samples;
static _Atomic long *pending;	/* per row id: sample number, or -1 */
static _Atomic long unmatched = 0;
static _Atomic int stop_sub = 0;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
sleep_until(double t)
{
	struct timespec ts;

	ts.tv_sec = (time_t) t;
	ts.tv_nsec = (long) ((t - ts.tv_sec) * 1e9);
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void
die(const char *fmt, const char *detail)
{
	fprintf(stderr, fmt, detail);
	fputc('\n', stderr);
	exit(1);
}

static redisContext *
redis_connect(void)
{
	redisContext *c = redisConnect(redis_host, redis_port);

	if (c == NULL || c->err)
		die("redis connect: %s", c ? c->errstr : "out of memory");
	return c;
}

static void *
subscriber(void *arg)
{
	redisContext *c = arg;
	size_t		plen = strlen(KEY_PREFIX);

	for (;;)
	{
		redisReply *r;
		double		t;

		if (redisGetReply(c, (void **) &r) != REDIS_OK)
		{
			if (atomic_load(&stop_sub))
				return NULL;
			die("subscriber: %s", c->errstr);
		}
		t = now();
		if (r->type == REDIS_REPLY_ARRAY)
		{
			if (r->elements == 3 && r->element[0]->type == REDIS_REPLY_STRING &&
				strcmp(r->element[0]->str, "message") == 0)
			{
				const char *key = r->element[2]->str;

				if (strncmp(key, KEY_PREFIX, plen) == 0)
				{
					int			id = atoi(key + plen);
					long		s;

					if (id >= 1 && id <= nrows &&
						(s = atomic_exchange(&pending[id], -1)) >= 0)
						atomic_store(&samples[s].t_gone, t);
					else
						atomic_fetch_add(&unmatched, 1);
				}
				else if (strcmp(key, "latency:stop") == 0)
				{
					freeReplyObject(r);
					return NULL;
				}
			}
		}
		freeReplyObject(r);
	}
}

static void *
writer(void *arg)
{
	int			w = (int) (intptr_t) arg;
	PGconn	   *pg = PQconnectdb(conninfo);
	redisContext *rc = redis_connect();
	PGresult   *res;
	int			next_id = w + 1;	/* this writer's rows: w+1, w+1+W, ... */
	char		key[128];
	char		code[64];

	if (PQstatus(pg) != CONNECTION_OK)
		die("postgres: %s", PQerrorMessage(pg));
	res = PQprepare(pg, "upd",
					"UPDATE app.entity SET label = 'Entity ' || $1 || ' at ' || clock_timestamp(), "
					"modified_ts = now() WHERE code = $1", 1, NULL);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		die("prepare: %s", PQerrorMessage(pg));
	PQclear(res);

	for (long k = w; k < nsamples_max; k += nwriters)
	{
		double		due = t_start + k / rate;
		Sample	   *s = &samples[k];
		const char *params[1];
		redisReply *r;
		int			id = next_id;

		next_id += nwriters;
		if (next_id > nrows)
			next_id = w + 1;

		sleep_until(due);
		s->id = id;
		s->t_sched = due;
		if (atomic_load(&pending[id]) >= 0)
		{
			/* the previous change of this key is not applied yet */
			s->id = 0;
			continue;
		}
		snprintf(code, sizeof(code), "entity_%d", id);
		snprintf(key, sizeof(key), KEY_PREFIX "%d", id);
		r = redisCommand(rc, "SET %s %s", key, "cached");
		if (r == NULL)
			die("redis SET: %s", rc->errstr);
		freeReplyObject(r);

		atomic_store(&pending[id], k);
		params[0] = code;
		s->t_sent = now();
		res = PQexecPrepared(pg, "upd", 1, params, NULL, NULL, 0);
		s->t_commit = now();
		if (PQresultStatus(res) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(res), "1") != 0)
			die("update: %s", PQerrorMessage(pg));
		PQclear(res);
	}
	PQfinish(pg);
	redisFree(rc);
	return NULL;
}

static int
dcmp(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return x < y ? -1 : x > y;
}

static double
pct(const double *v, long n, double p)
{
	long		i;

	if (n == 0)
		return NAN;
	i = (long) ceil(p / 100.0 * n) - 1;
	if (i < 0)
		i = 0;
	if (i >= n)
		i = n - 1;
	return v[i];
}

static void
report(const char *what, double *v, long n)
{
	qsort(v, n, sizeof(double), dcmp);
	printf("%-34s n=%-7ld min %8.3f  p50 %8.3f  p90 %8.3f  p99 %8.3f  p99.9 %8.3f  max %8.3f ms\n",
		   what, n, n ? v[0] * 1e3 : NAN, pct(v, n, 50) * 1e3, pct(v, n, 90) * 1e3,
		   pct(v, n, 99) * 1e3, pct(v, n, 99.9) * 1e3, n ? v[n - 1] * 1e3 : NAN);
}

int
main(int argc, char **argv)
{
	pthread_t  *threads;
	pthread_t	sub;
	redisContext *subc;
	redisReply *r;
	double		t_end,
				deadline;
	double	   *lat,
			   *lat_sent,
			   *upd,
			   *lag;
	long		n = 0,
				missing = 0,
				negative = 0,
				skipped = 0,
				measured_from;

	if (argc != 9)
	{
		fprintf(stderr, "usage: %s CONNINFO REDIS_HOST REDIS_PORT RATE DURATION WARMUP WRITERS ROWS\n", argv[0]);
		return 2;
	}
	conninfo = argv[1];
	redis_host = argv[2];
	redis_port = atoi(argv[3]);
	rate = atof(argv[4]);
	duration = atof(argv[5]);
	warmup = atof(argv[6]);
	nwriters = atoi(argv[7]);
	nrows = atoi(argv[8]);
	if (rate <= 0 || duration <= 0 || warmup < 0 || nwriters < 1 || nrows < nwriters)
		die("bad arguments%s", "");

	nsamples_max = (long) ((warmup + duration) * rate);
	measured_from = (long) (warmup * rate);
	samples = calloc(nsamples_max, sizeof(Sample));
	pending = malloc(sizeof(long) * (nrows + 1));
	for (int i = 0; i <= nrows; i++)
		atomic_init(&pending[i], -1);

	/* keyevent notifications for generic commands: DEL and UNLINK give "del" */
	subc = redis_connect();
	r = redisCommand(subc, "CONFIG SET notify-keyspace-events Eg");
	if (r == NULL || r->type == REDIS_REPLY_ERROR)
		die("CONFIG SET notify-keyspace-events: %s", r ? r->str : subc->errstr);
	freeReplyObject(r);
	r = redisCommand(subc, "SUBSCRIBE __keyevent@0__:del");
	if (r == NULL)
		die("SUBSCRIBE: %s", subc->errstr);
	freeReplyObject(r);
	pthread_create(&sub, NULL, subscriber, subc);

	t_start = now() + 0.2;
	threads = calloc(nwriters, sizeof(pthread_t));
	for (int w = 0; w < nwriters; w++)
		pthread_create(&threads[w], NULL, writer, (void *) (intptr_t) w);
	for (int w = 0; w < nwriters; w++)
		pthread_join(threads[w], NULL);
	t_end = now();

	/* let the last deletions arrive */
	deadline = now() + 10;
	for (;;)
	{
		int			left = 0;

		for (int i = 1; i <= nrows && !left; i++)
			left = atomic_load(&pending[i]) >= 0;
		if (!left || now() > deadline)
			break;
		usleep(10000);
	}
	{
		redisContext *c = redis_connect();

		/* wake the subscriber with a del event of a key of our own */
		freeReplyObject(redisCommand(c, "SET latency:stop 1"));
		freeReplyObject(redisCommand(c, "DEL latency:stop"));
		redisFree(c);
	}
	pthread_join(sub, NULL);
	redisFree(subc);

	lat = malloc(sizeof(double) * nsamples_max);
	lat_sent = malloc(sizeof(double) * nsamples_max);
	upd = malloc(sizeof(double) * nsamples_max);
	lag = malloc(sizeof(double) * nsamples_max);
	for (long k = measured_from; k < nsamples_max; k++)
	{
		Sample	   *s = &samples[k];
		double		g = atomic_load(&s->t_gone);

		if (s->id == 0)
		{
			skipped++;
			continue;
		}
		upd[n] = s->t_commit - s->t_sent;
		lag[n] = s->t_sent - s->t_sched;
		if (g == 0)
		{
			missing++;
			lat[n] = lat_sent[n] = INFINITY;
		}
		else
		{
			lat[n] = g - s->t_commit;
			lat_sent[n] = g - s->t_sent;
			if (lat[n] < 0)
				negative++;
		}
		n++;
	}

	printf("updates: %ld measured (after %.0fs warm-up) in %.1fs: %.1f/s achieved, target %.0f/s, %d writer connections\n",
		   n, warmup, t_end - t_start - warmup,
		   (nsamples_max - skipped - (double) measured_from) / (t_end - t_start - warmup), rate, nwriters);
	/* with no warm-up, the first update: what a cold start costs */
	if (measured_from == 0 && samples[0].id != 0)
	{
		double		g = atomic_load(&samples[0].t_gone);

		printf("first update: commit returned -> key gone %.3f ms\n",
			   g == 0 ? INFINITY : (g - samples[0].t_commit) * 1e3);
	}
	report("commit returned -> key gone", lat, n);
	report("UPDATE sent -> key gone", lat_sent, n);
	report("UPDATE round trip (for reference)", upd, n);
	report("writer lag behind schedule", lag, n);
	printf("keys never seen deleted: %ld; gone before the commit reply arrived: %ld; "
		   "updates skipped (key still pending): %ld; unmatched del events: %ld\n",
		   missing, negative, skipped, (long) atomic_load(&unmatched));
	return missing > 0 ? 3 : 0;
}
