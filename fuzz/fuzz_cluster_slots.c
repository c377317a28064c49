/*-------------------------------------------------------------------------
 *
 * fuzz_cluster_slots.c
 *	  libFuzzer target for ec_cluster_parse_slots() and ec_key_slot().
 *
 * The CLUSTER SLOTS reply comes off the network: the input is raw RESP,
 * fed through hiredis' redisReader exactly as the worker reads a reply,
 * and every reply it yields is parsed into a slot map.  On success the map
 * must be consistent: each owned slot points at a known primary, the count
 * of owned slots is right, every host is a NUL-terminated string that fits
 * and every port is in range.  The input is also hashed as a key: the slot
 * must be in range and a {hash tag} must hash like the tag alone.
 *
 * Built and run by scripts/fuzz.
 *
 *-------------------------------------------------------------------------
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "cluster_slots.h"
#include "fuzz_check.h"

static void
check_map(const EcSlotMap *map)
{
	int			owned = 0;

	CHECK(map->nnodes >= 1 && map->nnodes <= EC_CLUSTER_MAX_NODES);
	for (int i = 0; i < map->nnodes; i++)
	{
		CHECK(memchr(map->nodes[i].host, '\0', EC_CLUSTER_HOST_MAX) != NULL);
		CHECK(map->nodes[i].host[0] != '\0');
		CHECK(map->nodes[i].port >= 1 && map->nodes[i].port <= 65535);
		CHECK(ec_cluster_find_node(map, map->nodes[i].host, map->nodes[i].port) == i);
	}
	for (int s = 0; s < EC_CLUSTER_SLOTS; s++)
	{
		if (map->owner[s] == EC_SLOT_UNOWNED)
			continue;
		CHECK(map->owner[s] < map->nnodes);
		owned++;
	}
	CHECK(owned == map->nslots && owned > 0);
}

static void
check_key(const uint8_t *data, size_t size)
{
	const char *key = (const char *) data;
	int			slot = ec_key_slot(key, size);
	const char *open = memchr(key, '{', size);

	/* the specification's check value: CRC16 of "123456789" is 0x31C3 */
	CHECK(ec_key_slot("123456789", 9) == (0x31C3 & (EC_CLUSTER_SLOTS - 1)));
	CHECK(slot >= 0 && slot < EC_CLUSTER_SLOTS);
	if (open != NULL)
	{
		size_t		rest = size - (open - key) - 1;
		const char *close = memchr(open + 1, '}', rest);

		/* a non-empty tag: the key lands where the tag alone lands */
		if (close != NULL && close > open + 1)
			CHECK(slot == ec_key_slot(open + 1, close - open - 1));
	}
}

/*
 * hiredis 0.14 allocates an aggregate's element array as soon as it reads
 * the count, with no upper bound: "*163831361" alone asks for over a
 * gigabyte.  That is hiredis' behaviour against a hostile server, not a
 * fault of the parser under test, so inputs announcing more than a million
 * elements or bytes are skipped instead of reported as out-of-memory.
 */
static bool
announces_huge_length(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < size; i++)
	{
		unsigned long long n = 0;

		if (data[i] != '*' && data[i] != '$')
			continue;
		for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9'; j++)
		{
			n = n * 10 + (data[j] - '0');
			if (n > 1000000)
				return true;
		}
	}
	return false;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static EcSlotMap map;
	redisReader *reader;
	void	   *reply = NULL;

	check_key(data, size);
	if (announces_huge_length(data, size))
		return 0;
	reader = redisReaderCreate();
	if (reader == NULL)
		return 0;
	if (redisReaderFeed(reader, (const char *) data, size) == REDIS_OK)
	{
		/* several replies in one input: parse each, as a pipeline would */
		while (redisReaderGetReply(reader, &reply) == REDIS_OK && reply != NULL)
		{
			if (ec_cluster_parse_slots(reply, "seed.example", &map) == NULL)
				check_map(&map);
			freeReplyObject(reply);
			reply = NULL;
		}
	}
	redisReaderFree(reader);
	return 0;
}
