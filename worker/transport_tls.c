/*-------------------------------------------------------------------------
 *
 * transport_tls.c
 *	  TLS for the Redis transport, through OpenSSL: a client context
 *	  (trust store, client certificate), a non-blocking handshake bounded
 *	  by the caller's deadline, and send/receive on the TLS stream.
 *
 * Each way a TLS connection commonly fails gets its own message saying
 * what to change, because the operator who reads status.last_error has
 * only that to go on: an unknown CA, an expired certificate, a host name
 * the certificate does not carry, a plaintext server behind rediss://, a
 * client certificate the server refused.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "transport_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "utils/memutils.h"

struct EcTlsContext
{
	SSL_CTX    *ctx;
	EcTlsVerify verify;
};

struct EcTls
{
	SSL		   *ssl;
};

/* The reason of the oldest queued OpenSSL error, or a fallback. */
static const char *
ssl_reason(unsigned long e, const char *fallback)
{
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	return r ? r : fallback;
}

/*
 * OpenSSL reports a missing file as "system lib": say what the system
 * said.  False with err set if path cannot be read.
 */
static bool
readable(const char *path, const char *what, const char *guc, StringInfo err)
{
	FILE	   *f = fopen(path, "r");

	if (f == NULL)
	{
		appendStringInfo(err, "could not load the %s \"%s\" (entity_cache.%s): %m", what, path, guc);
		return false;
	}
	fclose(f);
	return true;
}

static bool
load_files(SSL_CTX *ctx, const EcTlsSettings *s, StringInfo err)
{
	if (s->verify != EC_TLS_VERIFY_NONE)
	{
		if (s->ca_file && s->ca_file[0])
		{
			if (!readable(s->ca_file, "CA file", "redis_tls_ca_file", err))
				return false;
			if (SSL_CTX_load_verify_locations(ctx, s->ca_file, NULL) != 1)
			{
				appendStringInfo(err, "could not load the CA file \"%s\" (entity_cache.redis_tls_ca_file): %s",
								 s->ca_file, ssl_reason(ERR_peek_last_error(), "unreadable"));
				return false;
			}
		}
		else if (SSL_CTX_set_default_verify_paths(ctx) != 1)
		{
			appendStringInfo(err, "could not load the system's trusted CA certificates: %s",
							 ssl_reason(ERR_peek_last_error(), "unknown error"));
			return false;
		}
	}
	if ((s->cert_file && s->cert_file[0]) != (s->key_file && s->key_file[0]))
	{
		appendStringInfoString(err, "mutual TLS needs both entity_cache.redis_tls_cert_file and entity_cache.redis_tls_key_file");
		return false;
	}
	if (s->cert_file && s->cert_file[0])
	{
		if (!readable(s->cert_file, "client certificate", "redis_tls_cert_file", err) ||
			!readable(s->key_file, "client key", "redis_tls_key_file", err))
			return false;
		if (SSL_CTX_use_certificate_chain_file(ctx, s->cert_file) != 1)
		{
			appendStringInfo(err, "could not load the client certificate \"%s\" (entity_cache.redis_tls_cert_file): %s",
							 s->cert_file, ssl_reason(ERR_peek_last_error(), "unreadable"));
			return false;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, s->key_file, SSL_FILETYPE_PEM) != 1 &&
			ERR_GET_REASON(ERR_peek_last_error()) != X509_R_KEY_VALUES_MISMATCH)
		{
			appendStringInfo(err, "could not load the client key \"%s\" (entity_cache.redis_tls_key_file): %s",
							 s->key_file, ssl_reason(ERR_peek_last_error(), "unreadable"));
			return false;
		}
		if (SSL_CTX_get0_privatekey(ctx) == NULL || SSL_CTX_check_private_key(ctx) != 1)
		{
			appendStringInfo(err, "the client key \"%s\" does not match the certificate \"%s\"",
							 s->key_file, s->cert_file);
			return false;
		}
	}
	return true;
}

EcTlsContext *
ec_tls_context_create(const EcTlsSettings *settings, StringInfo err)
{
	SSL_CTX    *ctx;
	EcTlsContext *tlsctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL)
	{
		appendStringInfo(err, "could not create a TLS context: %s",
						 ssl_reason(ERR_peek_last_error(), "out of memory"));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* the output buffer is written in pieces as the socket takes them */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
					 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_verify(ctx, settings->verify == EC_TLS_VERIFY_NONE ?
					   SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
	if (!load_files(ctx, settings, err))
	{
		SSL_CTX_free(ctx);
		ERR_clear_error();
		return NULL;
	}
	tlsctx = MemoryContextAlloc(TopMemoryContext, sizeof(EcTlsContext));
	tlsctx->ctx = ctx;
	tlsctx->verify = settings->verify;
	return tlsctx;
}

void
ec_tls_context_free(EcTlsContext *tlsctx)
{
	if (tlsctx == NULL)
		return;
	SSL_CTX_free(tlsctx->ctx);
	pfree(tlsctx);
}

static bool
is_ip_address(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* What the verification result means to the operator. */
static void
verify_error(long vr, const char *host, const char *node, StringInfo err)
{
	const char *what = X509_verify_cert_error_string(vr);

	switch (vr)
	{
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
		case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
			appendStringInfo(err, "TLS: the certificate of Redis at %s is signed by an unknown CA (%s); "
							 "set entity_cache.redis_tls_ca_file to the CA that signed it", node, what);
			break;
		case X509_V_ERR_CERT_HAS_EXPIRED:
			appendStringInfo(err, "TLS: the certificate of Redis at %s has expired; renew it on the server", node);
			break;
		case X509_V_ERR_CERT_NOT_YET_VALID:
			appendStringInfo(err, "TLS: the certificate of Redis at %s is not valid yet (check the clocks)", node);
			break;
		case X509_V_ERR_HOSTNAME_MISMATCH:
		case X509_V_ERR_IP_ADDRESS_MISMATCH:
			appendStringInfo(err, "TLS: the certificate of Redis at %s does not name \"%s\"; connect with a name "
							 "it carries, or set entity_cache.redis_tls_verify = ca", node, host);
			break;
		default:
			appendStringInfo(err, "TLS: the certificate of Redis at %s was not accepted: %s", node, what);
			break;
	}
}

/* A failed handshake step: why, as precisely as OpenSSL tells us. */
static void
handshake_error(SSL *ssl, int rc, const char *host, const char *node, StringInfo err)
{
	int			code = SSL_get_error(ssl, rc);
	unsigned long e = ERR_peek_error();
	long		vr = SSL_get_verify_result(ssl);

	if (vr != X509_V_OK && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
		verify_error(vr, host, node, err);
	else if (ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER ||
			 ERR_GET_REASON(e) == SSL_R_PACKET_LENGTH_TOO_LONG ||
			 ERR_GET_REASON(e) == SSL_R_RECORD_LENGTH_MISMATCH)
		appendStringInfo(err, "TLS handshake with Redis at %s failed: the server does not speak TLS "
						 "(a plaintext Redis behind rediss://? use redis://, or enable TLS on it)", node);
	else if (code == SSL_ERROR_SYSCALL || code == SSL_ERROR_ZERO_RETURN ||
			 ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
		appendStringInfo(err, "TLS handshake with Redis at %s failed: the server closed the connection "
						 "(a plaintext Redis behind rediss://?)%s%s", node,
						 errno ? ": " : "", errno ? strerror(errno) : "");
	else
		appendStringInfo(err, "TLS handshake with Redis at %s failed: %s", node,
						 ssl_reason(e, "unknown error"));
}

/* Set up SNI and host checking on a new SSL; false with err set. */
static bool
setup_ssl(SSL *ssl, int fd, const char *host, EcTlsVerify verify,
		  const char *node, StringInfo err)
{
	bool		ip = is_ip_address(host);

	if (SSL_set_fd(ssl, fd) != 1)
	{
		appendStringInfo(err, "TLS to Redis at %s: could not attach the socket", node);
		return false;
	}
	/* SNI is for names only (RFC 6066) */
	if (!ip && SSL_set_tlsext_host_name(ssl, host) != 1)
	{
		appendStringInfo(err, "TLS to Redis at %s: invalid server name \"%s\"", node, host);
		return false;
	}
	if (verify == EC_TLS_VERIFY_FULL)
	{
		X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
		int			ok;

		X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
			: X509_VERIFY_PARAM_set1_host(param, host, 0);
		if (ok != 1)
		{
			appendStringInfo(err, "TLS to Redis at %s: cannot check the certificate against \"%s\"", node, host);
			return false;
		}
	}
	return true;
}

EcTls *
ec_tls_connect(int fd, const char *host, EcTlsContext *tlsctx,
			   const char *node, EcDeadline deadline, StringInfo err)
{
	SSL		   *ssl;
	EcTls	   *tls;

	ERR_clear_error();
	ssl = SSL_new(tlsctx->ctx);
	if (ssl == NULL)
	{
		appendStringInfo(err, "TLS to Redis at %s: out of memory", node);
		return NULL;
	}
	if (!setup_ssl(ssl, fd, host, tlsctx->verify, node, err))
	{
		SSL_free(ssl);
		return NULL;
	}
	for (;;)
	{
		int			rc;
		int			code;

		ERR_clear_error();
		errno = 0;
		rc = SSL_connect(ssl);
		if (rc == 1)
			break;
		code = SSL_get_error(ssl, rc);
		if (code != SSL_ERROR_WANT_READ && code != SSL_ERROR_WANT_WRITE)
		{
			handshake_error(ssl, rc, host, node, err);
			SSL_free(ssl);
			ERR_clear_error();
			return NULL;
		}
		if (!ec_wait_fd(fd, code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline))
		{
			appendStringInfo(err, "TLS handshake with Redis at %s timed out: no answer within "
							 "entity_cache.redis_timeout (a plaintext Redis behind rediss://?)", node);
			SSL_free(ssl);
			return NULL;
		}
	}
	tls = MemoryContextAlloc(TopMemoryContext, sizeof(EcTls));
	tls->ssl = ssl;
	return tls;
}

void
ec_tls_free(EcTls *tls)
{
	/* no close_notify: the socket is closed at once and nothing waits for it */
	SSL_free(tls->ssl);
	pfree(tls);
}

/*
 * An error after the handshake.  With TLS 1.3 the server checks our
 * certificate after the client considers the handshake done, so a refused
 * client certificate shows up here, as an alert at the first read.
 */
static ssize_t
io_error(EcTls *tls, int rc, short *want, char *msg, size_t msgsize)
{
	int			code = SSL_get_error(tls->ssl, rc);
	unsigned long e = ERR_peek_error();
	int			reason = ERR_GET_REASON(e);

	if (code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE)
	{
		*want = (code == SSL_ERROR_WANT_READ) ? POLLIN : POLLOUT;
		return 0;
	}
	if (reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
		reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
		reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN ||
		reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA ||
		reason == SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED ||
		reason == SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE)
		snprintf(msg, msgsize, "TLS: the server refused our client certificate (%s); "
				 "set entity_cache.redis_tls_cert_file and redis_tls_key_file to a certificate it trusts",
				 ssl_reason(e, "refused"));
	else if (code == SSL_ERROR_ZERO_RETURN ||
			 (code == SSL_ERROR_SYSCALL && errno == 0) ||
			 reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)
		snprintf(msg, msgsize, "the server closed the connection");
	else if (code == SSL_ERROR_SYSCALL)
		snprintf(msg, msgsize, "%s", strerror(errno));
	else
		snprintf(msg, msgsize, "TLS: %s", ssl_reason(e, "unknown error"));
	ERR_clear_error();
	return -1;
}

ssize_t
ec_tls_send(EcTls *tls, const char *buf, size_t len, short *want,
			char *msg, size_t msgsize)
{
	int			rc;

	ERR_clear_error();
	errno = 0;
	rc = SSL_write(tls->ssl, buf, (int) Min(len, (size_t) INT_MAX));
	if (rc > 0)
		return rc;
	return io_error(tls, rc, want, msg, msgsize);
}

ssize_t
ec_tls_recv(EcTls *tls, char *buf, size_t len, short *want,
			char *msg, size_t msgsize)
{
	int			rc;

	ERR_clear_error();
	errno = 0;
	rc = SSL_read(tls->ssl, buf, (int) Min(len, (size_t) INT_MAX));
	if (rc > 0)
		return rc;
	return io_error(tls, rc, want, msg, msgsize);
}
