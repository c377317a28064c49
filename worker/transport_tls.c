/*-------------------------------------------------------------------------
 *
 * transport_tls.c
 *	  TLS for the Redis transport (not built yet: refuses).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "transport_tls.h"

EcTls *
ec_tls_connect(int fd, const char *host, const EcTlsSettings *settings,
			   const char *node, EcDeadline deadline, StringInfo err)
{
	appendStringInfo(err, "TLS to Redis at %s is not supported yet", node);
	return NULL;
}

void
ec_tls_free(EcTls *tls)
{
}

ssize_t
ec_tls_send(EcTls *tls, const char *buf, size_t len, short *want,
			char *msg, size_t msgsize)
{
	strlcpy(msg, "TLS not supported", msgsize);
	return -1;
}

ssize_t
ec_tls_recv(EcTls *tls, char *buf, size_t len, short *want,
			char *msg, size_t msgsize)
{
	strlcpy(msg, "TLS not supported", msgsize);
	return -1;
}
