/*-------------------------------------------------------------------------
 *
 * transport_tls.h
 *	  TLS for transport.c, through OpenSSL: handshake, send and receive on
 *	  a non-blocking socket.  Internal to the transport.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EC_TRANSPORT_TLS_H
#define EC_TRANSPORT_TLS_H

#include <sys/types.h>

#include "transport.h"

typedef struct EcTls EcTls;

/* Wait for poll events on fd before the deadline: 1 ready, 0 timed out. */
extern int	ec_wait_fd(int fd, short events, EcDeadline deadline);

/*
 * Handshake on a connected socket, verifying the server as settings say;
 * host is the name or address the certificate must carry.  NULL with err
 * set (naming the node) on failure.
 */
extern EcTls *ec_tls_connect(int fd, const char *host, EcTlsContext *tlsctx,
							 const char *node, EcDeadline deadline, StringInfo err);
extern void ec_tls_free(EcTls *tls);

/* >0 bytes, 0 would block (*want: POLLIN/POLLOUT), -1 failed (msg set) */
extern ssize_t ec_tls_send(EcTls *tls, const char *buf, size_t len, short *want,
						   char *msg, size_t msgsize);
extern ssize_t ec_tls_recv(EcTls *tls, char *buf, size_t len, short *want,
						   char *msg, size_t msgsize);

#endif							/* EC_TRANSPORT_TLS_H */
