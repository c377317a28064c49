/*-------------------------------------------------------------------------
 *
 * fuzz_check.h
 *	  The invariant check shared by the fuzz targets.
 *
 * abort() rather than assert(): the check must hold in any build, and
 * libFuzzer reports an abort as a crash together with the input.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FUZZ_CHECK_H
#define FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "invariant failed: %s (%s:%d)\n", \
					#cond, __FILE__, __LINE__); \
			abort(); \
		} \
	} while (0)

#endif							/* FUZZ_CHECK_H */
