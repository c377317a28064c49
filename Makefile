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
	extension/status.o \
	extension/utility.o \
	extension/consistency.o \
	worker/worker.o \
	worker/drain.o \
	worker/redelete.o \
	worker/redis_client.o \
	worker/transport.o \
	worker/transport_tls.o \
	worker/redis_url.o \
	worker/cluster.o \
	worker/cluster_slots.o

EXTENSION = entity_cache
# The install script of each version after 1.0 is built from 1.0's and the
# upgrade scripts, so a fresh install and an updated one run the same SQL
# and every object is defined in one place.
DATA = extension/entity_cache--1.0.sql \
	extension/entity_cache--1.0--1.1.sql \
	extension/entity_cache--1.1--1.2.sql
DATA_built = extension/entity_cache--1.1.sql \
	extension/entity_cache--1.2.sql
PGFILEDESC = "entity_cache - keep Redis cache keys in step with table changes"

PG_CPPFLAGS = -I$(srcdir)/extension -I$(srcdir)/worker
SHLIB_LINK = -lhiredis -lssl -lcrypto

REGRESS = setup capture api templates privileges errors keys
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

extension/entity_cache--1.1.sql: extension/entity_cache--1.0.sql extension/entity_cache--1.0--1.1.sql
extension/entity_cache--1.2.sql: extension/entity_cache--1.0.sql extension/entity_cache--1.0--1.1.sql \
	extension/entity_cache--1.1--1.2.sql
$(DATA_built):
	( echo '/* $(notdir $@): built by make from the scripts below; edit those */'; \
	  printf '%s\n' '\echo Use "CREATE EXTENSION entity_cache" to load this file. \quit'; \
	  sed '/^\\echo /d' $^ ) > $@
