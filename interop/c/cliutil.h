/* Helpers shared by zb-pub and zb-sub: JSON output and argument parsing. */
#ifndef CLIUTIL_H
#define CLIUTIL_H

#include <stdio.h>

#include "zbclient.h"

/* Write text as a JSON string (the text is valid UTF-8, written as is). */
void json_text(FILE *fp, const void *text, size_t len);
/* Write octets as a JSON string of lowercase hex. */
void json_hex(FILE *fp, zb_bytes data);
/* Write an instant as a JSON string of nanoseconds since the epoch. */
void json_time_ns(FILE *fp, zb_time t);
/* The stderr line of --batch-commands:
 *   {"batch_commands":B,"batches_in":N,"entries_in":N,"batches_out":N,"entries_out":N}
 * B: whether the WELCOME offered batches of commands; the BROKER_BATCHes
 * received and the BATCHes sent, with their entries (zb_client_batch_stats). */
void print_batch_stats(const zb_client *c, int offered);
/* Milliseconds on the monotonic clock. */
long long now_ms(void);
/* Print "prog: message" to stderr and exit with status. */
void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Parse a non-negative integer option value, or die. */
long parse_count(const char *option, const char *text);

/* Exit status of zb-pub and zb-sub when the broker refuses the handshake
 * (ZB_EAUTH): a key it does not know, or none where it needs one. (3, the
 * Python CLI's, already means handler errors to zb-pub.) */
#define EXIT_REFUSED 5
/* A client connected to endpoint; with server_key and key (--server-key,
 * --key: Z85 text or zmq.auth certificate files) over CURVE. Dies with
 * status 2 on a bad key or only one of the two, 1 on any other failure. */
zb_client *connect_client(const char *prog, const char *endpoint, const char *server_key,
                          const char *key);

#endif
