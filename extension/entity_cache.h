/*-------------------------------------------------------------------------
 *
 * entity_cache.h
 *	  Declarations shared by the SQL-callable side and the worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITY_CACHE_H
#define ENTITY_CACHE_H

#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/spin.h"

#define EC_SCHEMA "entity_cache"
#define EC_QUEUE "queue"
#define EC_NOTIFY_CHANNEL "entity_cache"
#define EC_WORKER_NAME "entity_cache worker"

/* queue.op */
#define EC_OP_KEY 'k'			/* DEL the key, or SET it in refresh mode */
#define EC_OP_FLUSH 'f'			/* SCAN MATCH key, UNLINK what matches */
#define EC_OP_WRITE 'w'			/* SET the key from its row, in either mode */

/* columns of entity_cache.queue, in order */
#define Natts_ec_queue 6
#define Anum_ec_queue_op 1
#define Anum_ec_queue_key 2
#define Anum_ec_queue_relid 3
#define Anum_ec_queue_template 4
#define Anum_ec_queue_vals 5
#define Anum_ec_queue_queued_at 6

typedef enum EcMode
{
	EC_MODE_DELETE,
	EC_MODE_REFRESH
} EcMode;

/* entity_cache.notify: who sends NOTIFY entity_cache, and when */
typedef enum EcNotify
{
	EC_NOTIFY_OFF,
	EC_NOTIFY_APPLIED,			/* the worker, once Redis applied the key */
	EC_NOTIFY_COMMIT			/* the writer, at its commit */
} EcNotify;

/* payload prefix of a flush pattern (see ec_notify_send) */
#define EC_NOTIFY_FLUSH_PREFIX "flush:"
/* payload prefix of a key that would otherwise read as a pattern */
#define EC_NOTIFY_KEY_PREFIX "key:"

/* GUCs (entity_cache.c) */
extern char *ec_database;
extern char *ec_redis_url;
extern char *ec_redis_password;
extern int	ec_mode;
extern int	ec_ttl;
extern int	ec_batch_size;
extern int	ec_redis_timeout_ms;
extern double ec_batch_delay_ms;
extern int	ec_notify;
extern int	ec_redelete_delay_ms;
extern int	ec_redelete_steps;

/* redelete_steps' upper bound: the first step is then delay / 128 */
#define EC_REDELETE_MAX_STEPS 8

/* GUCs: TLS and Sentinel (issue 11) */
extern char *ec_redis_tls_ca_file;
extern char *ec_redis_tls_cert_file;
extern char *ec_redis_tls_key_file;
extern int	ec_redis_tls_verify;	/* an EcTlsVerify (transport.h) */
extern char *ec_redis_sentinel_password;

#define EC_LAST_ERROR_LEN 512
#define EC_REDIS_NODE_LEN 300

/*
 * The one shared-memory segment: the worker's face to the backends.
 *
 * Who writes what, and what guards it:
 *	- mutex, a spinlock held for a few loads and stores (never a copy of a
 *	  string, never a call), guards every scalar from worker_pid to
 *	  cluster_redirections.  The worker writes them; worker_attach() and
 *	  worker_detach() set worker_pid and worker_procno; the database flags
 *	  are also set by a worker that is still looking for its database.
 *	- last_error and redis_node are written by the worker alone and read
 *	  with no lock through text_changecount, as PgBackendStatus'
 *	  st_changecount: the count is odd while a write is under way, and a
 *	  reader copies until it saw the same even count before and after.
 *	  Use ec_shared_set_text() and ec_shared_get_text().
 *	- applied_cv is a condition variable (its own lock): the worker
 *	  broadcasts it after each batch, sync() sleeps on it.
 */
typedef struct EcShared
{
	slock_t		mutex;

	/*
	 * -- guarded by mutex -- (status.c copies everything up to
	 * text_changecount in one piece: keep the scalars above it)
	 */
	pid_t		worker_pid;		/* 0 while no worker runs */
	int			worker_procno;	/* its PGPROC, for SetLatch; -1 if none */
	Oid			worker_dboid;	/* database it serves, once connected */
	bool		database_missing;	/* entity_cache.database was not found */
	bool		said_missing;	/* ... and the log said so once */
	TimestampTz drained_as_of;	/* all committed before this is applied */
	bool		redis_connected;
	bool		redis_tls;		/* the connection of redis_node is TLS */
	uint64		applied_total;	/* queue rows applied to Redis */
	uint64		errors_total;
	TimestampTz last_error_at;	/* 0: no error yet */
	uint64		refresh_failed; /* keys deleted because no lookup could run */
	uint64		notify_skipped;	/* notifications not sent (queue filling, too long) */
	uint64		redelete_pending;	/* keys waiting to be applied again */
	/* Redis Cluster (worker/cluster.c); cluster_nodes 0: not a cluster */
	int			cluster_nodes;	/* primaries in the slot map */
	TimestampTz cluster_slots_loaded_at;
	uint64		cluster_redirections;	/* MOVED and ASK followed */

	/* -- written by the worker, read through text_changecount -- */
	pg_atomic_uint32 text_changecount;
	char		last_error[EC_LAST_ERROR_LEN];
	char		redis_node[EC_REDIS_NODE_LEN];	/* "host:port" or socket; "" if none */

	ConditionVariable applied_cv;	/* broadcast after each applied batch */
} EcShared;

extern EcShared *ec_shared;		/* NULL unless preloaded */

/* entity_cache.c: the strings of EcShared, and who may write them */
extern bool ec_am_worker(void);
struct HTAB;
extern struct HTAB *ec_cstring_hash_create(const char *name, long nelem,
										   Size entrysize, MemoryContext cxt);
extern void ec_shared_set_text(char *field, size_t size, const char *value);
extern void ec_shared_get_text(char *dst, const char *field, size_t size);

/* entity_cache.c */
extern void ec_wake_worker(void);
extern bool ec_database_served(const char **why);

/* utility.c */
extern void ec_utility_init(void);

/* api.c: refuse to queue in a read-only transaction or on a standby */
extern void ec_require_read_write(const char *what);

/* queue.c */
extern Oid	ec_queue_relid(bool missing_ok);
extern bool ec_queue_shape_ok(TupleDesc desc);
typedef struct EcQueueWriter EcQueueWriter;
extern EcQueueWriter *ec_queue_open(void);
extern bool ec_queue_add(EcQueueWriter *w, char op, const char *key,
						 Oid relid, const char *template, Datum vals, bool vals_null);
extern void ec_queue_close(EcQueueWriter *w);
extern void ec_queue_xact_init(void);
extern void ec_notify_send(char op, const char *key);
extern void ec_count_notify_skipped(uint64 n);

/* worker/worker.c */
extern PGDLLEXPORT void entity_cache_worker_main(Datum main_arg);
extern void ec_set_error(const char *fmt,...) pg_attribute_printf(1, 2);

#endif							/* ENTITY_CACHE_H */
