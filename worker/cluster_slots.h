/*-------------------------------------------------------------------------
 *
 * cluster_slots.h
 *	  Redis Cluster hash slots: the slot of a key, and the slot map parsed
 *	  from a CLUSTER SLOTS reply.
 *
 * Plain C over hiredis' redisReply, no PostgreSQL dependency and no
 * allocation, so that the worker and a libFuzzer target share it
 * (fuzz/fuzz_cluster_slots.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_CLUSTER_SLOTS_H
#define EC_CLUSTER_SLOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define EC_CLUSTER_SLOTS 16384
#define EC_CLUSTER_MAX_NODES 256	/* primaries; Redis suggests <= 1000 nodes */
#define EC_CLUSTER_HOST_MAX 256
#define EC_SLOT_UNOWNED 0xFFFF

typedef struct EcClusterNode
{
	char		host[EC_CLUSTER_HOST_MAX];
	int			port;
} EcClusterNode;

typedef struct EcSlotMap
{
	int			nnodes;			/* distinct primaries that own a slot */
	int			nslots;			/* slots with an owner */
	EcClusterNode nodes[EC_CLUSTER_MAX_NODES];
	uint16_t	owner[EC_CLUSTER_SLOTS];	/* index into nodes, or
											 * EC_SLOT_UNOWNED */
} EcSlotMap;

/* CRC16 (XMODEM) of the key, or of its {hash tag}, modulo 16384. */
extern int	ec_key_slot(const char *key, size_t len);

/*
 * Fill map from a CLUSTER SLOTS reply.  seed_host replaces an empty host
 * (Redis sends "" or "?" when a node does not know its own address: it is
 * then the one that was asked).  A range whose primary has no known
 * endpoint (NULL) stays unowned: a key there is reported, not guessed.
 * Returns NULL on success, else a static message; map is then undefined.
 */
extern const char *ec_cluster_parse_slots(const redisReply *reply,
										  const char *seed_host,
										  EcSlotMap *map);

/* Index of host:port in map->nodes, or -1. */
extern int	ec_cluster_find_node(const EcSlotMap *map, const char *host, int port);

#endif							/* EC_CLUSTER_SLOTS_H */
