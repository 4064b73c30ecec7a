/* zb-sub: subscribe on a zmqbus channel and print each message as one JSON line.
 *
 *   zb-sub --endpoint EP --channel UUID --pattern P [--pattern P2 ...] [--queue Q]
 *          [--count N] [--stop-topic T] [--error TEXT] [--timeout MS] [--name NAME]
 *          [--batch-commands] [--server-key KEY --key KEY]
 *
 * Prints "ready" to stderr once every SUBSCRIBE is confirmed. Each message is
 * printed to stdout as
 *   {"topic":...,"headers":{...},"payload":HEX,"id":HEX,"timestamp_ns":"...",
 *    "sids":[HEX,...],"confirmed":true|false}
 * (compact JSON, byte for byte what interop/node/zb-sub.js prints)
 * and ACKed, when its token is not empty, with [n, 0, []] (n: the named sids
 * this client holds) or, with --error TEXT, with [0, 0, [TEXT]] like a
 * handler that failed. Stops after N messages (--count) or after a message on
 * topic T (--stop-topic), then DISCONNECTs. Exit status: 0 done, 1 failure,
 * 2 usage, 4 --timeout MS (default 30000) expired first, 5 the broker
 * refused the handshake (--server-key and --key as for zb-pub).
 *
 * --batch-commands: ask for batches of commands in the HELLO. If the WELCOME
 * offers them, the ACKs of messages handled one after the other without
 * waiting on the socket (the DELIVER entries of one BROKER_BATCH) leave as
 * one BATCH. At the end, print to stderr the line zb-pub prints with it.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cliutil.h"
#include "zbclient.h"

#define MAX_PATTERNS 16
#define CALL_TIMEOUT_MS 5000

static void usage(void)
{
    die(2, "usage: zb-sub --endpoint EP --channel UUID --pattern P [--pattern P2 ...] [--queue Q]\n"
           "              [--count N] [--stop-topic T] [--error TEXT] [--timeout MS] [--name NAME]\n"
           "              [--batch-commands] [--server-key KEY --key KEY]");
}

static void print_delivery(const zb_delivery *d)
{
    size_t i;
    printf("{\"topic\":");
    json_text(stdout, d->topic.data, d->topic.size);
    if (d->body_ok) {
        const zb_message *m = &d->message;
        printf(",\"headers\":{");
        for (i = 0; i < m->n_headers; i++) {
            printf(i ? "," : "");
            json_text(stdout, m->headers[i].key, m->headers[i].key_len);
            printf(":");
            json_text(stdout, m->headers[i].value, m->headers[i].value_len);
        }
        printf("},\"payload\":");
        json_hex(stdout, m->payload);
        printf(",\"id\":");
        json_hex(stdout, (zb_bytes){m->id, 16});
        printf(",\"timestamp_ns\":");
        json_time_ns(stdout, m->timestamp);
    } else {
        printf(",\"undecodable\":true");
    }
    printf(",\"sids\":[");
    for (i = 0; i < d->sids.size / 4; i++) {
        printf(i ? "," : "");
        json_hex(stdout, (zb_bytes){d->sids.data + 4 * i, 4});
    }
    printf("],\"confirmed\":%s}\n", d->token.size ? "true" : "false");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"endpoint", required_argument, 0, 'e'}, {"channel", required_argument, 0, 'c'},
        {"pattern", required_argument, 0, 'p'},  {"queue", required_argument, 0, 'q'},
        {"count", required_argument, 0, 'n'},    {"stop-topic", required_argument, 0, 's'},
        {"error", required_argument, 0, 'E'},    {"timeout", required_argument, 0, 't'},
        {"name", required_argument, 0, 'N'},     {"batch-commands", no_argument, 0, 'B'},
        {"server-key", required_argument, 0, 'S'}, {"key", required_argument, 0, 'K'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    const char *endpoint = NULL, *channel_text = NULL, *queue = NULL, *stop_topic = NULL;
    const char *error_text = NULL, *name = NULL, *server_key = NULL, *key = NULL;
    const char *patterns[MAX_PATTERNS];
    size_t n_patterns = 0, i;
    long count = 0, timeout_ms = 30000, received = 0;
    uint8_t channel[16];
    zb_client *c;
    int opt, rc, status = 0, batch_commands = 0, offered;
    long long deadline;

    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 'c': channel_text = optarg; break;
        case 'p':
            if (n_patterns == MAX_PATTERNS)
                die(2, "zb-sub: at most %d patterns", MAX_PATTERNS);
            patterns[n_patterns++] = optarg;
            break;
        case 'q': queue = optarg; break;
        case 'n': count = parse_count("--count", optarg); break;
        case 's': stop_topic = optarg; break;
        case 'E': error_text = optarg; break;
        case 't': timeout_ms = parse_count("--timeout", optarg); break;
        case 'N': name = optarg; break;
        case 'B': batch_commands = 1; break;
        case 'S': server_key = optarg; break;
        case 'K': key = optarg; break;
        default: usage();
        }
    }
    if (!endpoint || !channel_text || n_patterns == 0 || optind != argc)
        usage();
    if (zb_parse_channel(channel_text, channel))
        die(2, "zb-sub: --channel: not a UUID: %s", channel_text);

    c = connect_client("zb-sub", endpoint, server_key, key);
    zb_client_ask_batch_commands(c, batch_commands);
    if ((rc = zb_client_hello(c, channel, name, CALL_TIMEOUT_MS))) {
        fprintf(stderr, "zb-sub: join failed: %s\n", zb_client_last_error(c));
        zb_client_destroy(c);
        return rc == ZB_EAUTH ? EXIT_REFUSED : 1;
    }
    for (i = 0; i < n_patterns; i++) {
        if ((rc = zb_client_subscribe(c, patterns[i], queue, NULL, CALL_TIMEOUT_MS))) {
            fprintf(stderr, "zb-sub: subscribe %s failed: %s\n", patterns[i], zb_client_last_error(c));
            zb_client_disconnect(c, CALL_TIMEOUT_MS);
            zb_client_destroy(c);
            return 1;
        }
    }
    offered = zb_client_batching(c);
    fprintf(stderr, "ready\n");
    fflush(stderr);

    deadline = now_ms() + timeout_ms;
    while (count == 0 || received < count) {
        zb_delivery d;
        size_t known = 0;
        int stop;
        zb_bytes err;
        char reason[128];
        long long left = deadline - now_ms();
        rc = zb_client_next_delivery(c, &d, left > 0 ? (int)left : 0);
        if (rc == ZB_ETIMEOUT) {
            fprintf(stderr, "zb-sub: timed out after %ld message(s)\n", received);
            status = 4;
            break;
        }
        if (rc) {
            fprintf(stderr, "zb-sub: receive failed: %s\n", zb_client_last_error(c));
            status = rc == ZB_EAUTH ? EXIT_REFUSED : 1;
            break;
        }
        for (i = 0; i < d.sids.size / 4; i++)
            known += zb_client_has_sid(c, d.sids.data + 4 * i);
        print_delivery(&d);
        if (!d.body_ok) {
            snprintf(reason, sizeof reason, "subscriber could not decode message: code %d",
                     ZB_BAD_BODY);
            err = (zb_bytes){(const uint8_t *)reason, strlen(reason)};
            rc = zb_client_ack(c, &d, 0, 0, &err, 1);
        } else if (error_text) {
            err = (zb_bytes){(const uint8_t *)error_text, strlen(error_text)};
            rc = zb_client_ack(c, &d, 0, 0, &err, 1);
        } else {
            rc = zb_client_ack(c, &d, known, 0, NULL, 0);
        }
        if (rc)
            fprintf(stderr, "zb-sub: ACK failed: %s\n", zb_client_last_error(c));
        stop = stop_topic && d.topic.size == strlen(stop_topic) &&
               memcmp(d.topic.data, stop_topic, d.topic.size) == 0;
        zb_delivery_free(&d);
        received++;
        if (stop)
            break;
    }
    if ((rc = zb_client_disconnect(c, CALL_TIMEOUT_MS))) {
        fprintf(stderr, "zb-sub: disconnect failed: %s\n", zb_client_last_error(c));
        if (!status)
            status = 1;
    }
    if (batch_commands)
        print_batch_stats(c, offered);
    zb_client_destroy(c);
    return status;
}
