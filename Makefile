# entity_cache: PGXS build.  make && make install; make installcheck runs the
# pg_regress suites on a throwaway instance and the TAP suites in t/.

MODULE_big = entity_cache
OBJS = \
	extension/entity_cache.o \
	extension/queue.o \
	extension/keys.o \
	extension/template.o \
	extension/capture.o \
	extension/api.o \
	worker/worker.o \
	worker/drain.o \
	worker/redis_client.o \
	worker/transport.o \
	worker/transport_tls.o \
	worker/redis_url.o \
	worker/cluster.o \
	worker/cluster_slots.o

EXTENSION = entity_cache
DATA = extension/entity_cache--1.0.sql \
	extension/entity_cache--1.1.sql \
	extension/entity_cache--1.0--1.1.sql
PGFILEDESC = "entity_cache - keep Redis cache keys in step with table changes"

PG_CPPFLAGS = -I$(srcdir)/extension -I$(srcdir)/worker
SHLIB_LINK = -lhiredis -lssl -lcrypto

REGRESS = setup capture api templates privileges errors
# pg_regress starts its own instance, preloaded, with no Redis reachable,
# so the suites see exactly what the capture side queued.
REGRESS_OPTS = --temp-instance=$(CURDIR)/tmp_check_regress \
	--temp-config=$(srcdir)/sql/regress.conf
TAP_TESTS = 1

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: rebuild everything when one changes,
# or objects disagree on the layout of shared structs.
$(OBJS): $(wildcard $(srcdir)/extension/*.h $(srcdir)/worker/*.h)
