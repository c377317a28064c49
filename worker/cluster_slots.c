/*-------------------------------------------------------------------------
 *
 * cluster_slots.c
 *	  Key slots and the CLUSTER SLOTS reply, as the Redis Cluster
 *	  specification defines them.
 *
 * Plain C, no PostgreSQL dependency (see cluster_slots.h): the reply comes
 * from the network, so every element is checked for type and range before
 * it is used, and the fuzzer feeds it arbitrary RESP.
 *
 *-------------------------------------------------------------------------
 */
#include "cluster_slots.h"

#include <string.h>

/*
 * CRC16-CCITT in its XMODEM form (polynomial 0x1021, initial value 0, no
 * reflection), bit by bit: keys are short and a table buys nothing that
 * matters next to a network round trip.
 */
static uint16_t
crc16(const char *buf, size_t len)
{
	uint16_t	crc = 0;

	for (size_t i = 0; i < len; i++)
	{
		crc ^= (uint16_t) ((unsigned char) buf[i]) << 8;
		for (int b = 0; b < 8; b++)
			crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021) : (uint16_t) (crc << 1);
	}
	return crc;
}

int
ec_key_slot(const char *key, size_t len)
{
	size_t		open;
	size_t		close;

	/* the hash tag: between the first '{' and the first '}' after it */
	for (open = 0; open < len && key[open] != '{'; open++)
		;
	if (open < len)
	{
		for (close = open + 1; close < len && key[close] != '}'; close++)
			;
		/* "{}" or no closing brace: the whole key is hashed */
		if (close < len && close > open + 1)
			return crc16(key + open + 1, close - open - 1) & (EC_CLUSTER_SLOTS - 1);
	}
	return crc16(key, len) & (EC_CLUSTER_SLOTS - 1);
}

int
ec_cluster_find_node(const EcSlotMap *map, const char *host, int port)
{
	for (int i = 0; i < map->nnodes; i++)
		if (map->nodes[i].port == port && strcmp(map->nodes[i].host, host) == 0)
			return i;
	return -1;
}

/*
 * The node of one slot range: [host, port, id, ...].  Returns the node's
 * index in map (added if new), -2 for a primary without a known endpoint,
 * or -1 with *err set.
 */
static int
parse_node(const redisReply *n, const char *seed_host, EcSlotMap *map,
		   const char **err)
{
	const redisReply *h;
	const redisReply *p;
	const char *host;
	size_t		hostlen;
	int			idx;

	if (n->type != REDIS_REPLY_ARRAY || n->elements < 2)
	{
		*err = "CLUSTER SLOTS: a node is not an array of host and port";
		return -1;
	}
	h = n->element[0];
	p = n->element[1];
	if (h->type == REDIS_REPLY_NIL)
		return -2;
	if (h->type != REDIS_REPLY_STRING || p->type != REDIS_REPLY_INTEGER)
	{
		*err = "CLUSTER SLOTS: a node's host is not a string or its port not an integer";
		return -1;
	}
	if (p->integer < 1 || p->integer > 65535)
	{
		*err = "CLUSTER SLOTS: a node's port is out of range";
		return -1;
	}
	host = h->str;
	hostlen = h->len;
	if (hostlen == 0 || (hostlen == 1 && host[0] == '?'))
	{
		host = seed_host;
		hostlen = strlen(seed_host);
	}
	if (hostlen >= EC_CLUSTER_HOST_MAX || memchr(host, '\0', hostlen) != NULL)
	{
		*err = "CLUSTER SLOTS: a node's host is too long or contains a NUL byte";
		return -1;
	}
	for (idx = 0; idx < map->nnodes; idx++)
		if (map->nodes[idx].port == (int) p->integer &&
			strlen(map->nodes[idx].host) == hostlen &&
			memcmp(map->nodes[idx].host, host, hostlen) == 0)
			return idx;
	if (map->nnodes >= EC_CLUSTER_MAX_NODES)
	{
		*err = "CLUSTER SLOTS: more primaries than entity_cache supports";
		return -1;
	}
	memcpy(map->nodes[idx].host, host, hostlen);
	map->nodes[idx].host[hostlen] = '\0';
	map->nodes[idx].port = (int) p->integer;
	map->nnodes++;
	return idx;
}

const char *
ec_cluster_parse_slots(const redisReply *reply, const char *seed_host,
					   EcSlotMap *map)
{
	const char *err = NULL;

	map->nnodes = 0;
	map->nslots = 0;
	for (int s = 0; s < EC_CLUSTER_SLOTS; s++)
		map->owner[s] = EC_SLOT_UNOWNED;

	if (reply == NULL || reply->type != REDIS_REPLY_ARRAY)
		return reply && reply->type == REDIS_REPLY_ERROR ?
			"CLUSTER SLOTS failed" : "CLUSTER SLOTS: the reply is not an array";

	for (size_t i = 0; i < reply->elements; i++)
	{
		const redisReply *r = reply->element[i];
		long long	start;
		long long	end;
		int			idx;

		if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
			r->element[0]->type != REDIS_REPLY_INTEGER ||
			r->element[1]->type != REDIS_REPLY_INTEGER)
			return "CLUSTER SLOTS: a range is not [start, end, primary, ...]";
		start = r->element[0]->integer;
		end = r->element[1]->integer;
		if (start < 0 || end >= EC_CLUSTER_SLOTS || start > end)
			return "CLUSTER SLOTS: a slot range is out of bounds";
		idx = parse_node(r->element[2], seed_host, map, &err);
		if (idx == -1)
			return err;
		if (idx == -2)
			continue;
		for (long long s = start; s <= end; s++)
		{
			if (map->owner[s] == EC_SLOT_UNOWNED)
				map->nslots++;
			map->owner[s] = (uint16_t) idx;
		}
	}
	if (map->nslots == 0)
		return "CLUSTER SLOTS: no slot has a primary";
	return NULL;
}
