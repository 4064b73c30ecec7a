/* Helpers shared by zb-pub and zb-sub. */
#include "cliutil.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The control characters JSON writes as \b \t \n \f \r (as JSON.stringify does). */
static const char SHORT[] = "\b\t\n\f\r";

void json_text(FILE *fp, const void *text, size_t len)
{
    const unsigned char *s = text;
    size_t i;
    fputc('"', fp);
    for (i = 0; i < len; i++) {
        const char *short_escape = s[i] < 0x20 ? strchr(SHORT, s[i]) : NULL;
        if (s[i] == '"' || s[i] == '\\')
            fprintf(fp, "\\%c", s[i]);
        else if (s[i] && short_escape)
            fprintf(fp, "\\%c", "btnfr"[short_escape - SHORT]);
        else if (s[i] < 0x20)
            fprintf(fp, "\\u%04x", s[i]);
        else
            fputc(s[i], fp);
    }
    fputc('"', fp);
}

void json_hex(FILE *fp, zb_bytes data)
{
    size_t i;
    fputc('"', fp);
    for (i = 0; i < data.size; i++)
        fprintf(fp, "%02x", data.data[i]);
    fputc('"', fp);
}

void json_time_ns(FILE *fp, zb_time t)
{
    /* sec * 10^9 + nsec does not always fit in 64 bits: write it digit-wise */
    if (t.sec >= 0) {
        if (t.sec == 0)
            fprintf(fp, "\"%" PRIu32 "\"", t.nsec);
        else
            fprintf(fp, "\"%" PRId64 "%09" PRIu32 "\"", t.sec, t.nsec);
    } else if (t.nsec == 0) {
        fprintf(fp, "\"%" PRId64 "000000000\"", t.sec);
    } else if (t.sec == -1) {
        fprintf(fp, "\"-%" PRIu32 "\"", 1000000000u - t.nsec);
    } else {
        fprintf(fp, "\"-%" PRId64 "%09" PRIu32 "\"", -(t.sec + 1), 1000000000u - t.nsec);
    }
}

void die(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(status);
}

long parse_count(const char *option, const char *text)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text == 0 || *end != 0 || v < 0)
        die(2, "%s: not a non-negative integer: %s", option, text);
    return v;
}

long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void print_batch_stats(const zb_client *c, int offered)
{
    zb_batch_stats s;
    zb_client_batch_stats(c, &s);
    fprintf(stderr,
            "{\"batch_commands\":%s,\"batches_in\":%llu,\"entries_in\":%llu,"
            "\"batches_out\":%llu,\"entries_out\":%llu}\n",
            offered ? "true" : "false", (unsigned long long)s.batches_in,
            (unsigned long long)s.entries_in, (unsigned long long)s.batches_out,
            (unsigned long long)s.entries_out);
    fflush(stderr);
}

zb_client *connect_client(const char *prog, const char *endpoint, const char *server_key,
                          const char *key)
{
    char server_public[ZB_KEY_TEXT], public_key[ZB_KEY_TEXT], secret_key[ZB_KEY_TEXT], err[512];
    zb_client *c;
    if (!server_key != !key)
        die(2, "%s: CURVE needs both --server-key (the broker's public key) and --key "
               "(this client's secret key)", prog);
    if (server_key && zb_load_public_key(server_key, server_public, err, sizeof err))
        die(2, "%s: --server-key: %s", prog, err);
    if (key && zb_load_keypair(key, public_key, secret_key, err, sizeof err))
        die(2, "%s: --key: %s", prog, err);
    if (!(c = zb_client_create()))
        die(1, "%s: cannot create a ZeroMQ socket", prog);
    if ((server_key && zb_client_set_curve(c, server_public, public_key, secret_key)) ||
        zb_client_connect(c, endpoint)) {
        fprintf(stderr, "%s: %s\n", prog, zb_client_last_error(c));
        zb_client_destroy(c);
        exit(1);
    }
    return c;
}
