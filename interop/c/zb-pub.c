/* zb-pub: publish messages on a zmqbus channel.
 *
 *   zb-pub --endpoint EP --channel UUID --topic T [--header K=V ...]
 *          [--payload TEXT | --payload-hex HEX | --payload-stdin]
 *          [--count N] [--confirm] [--timeout MS] [--name NAME] [--raw-garbage]
 *          [--batch-commands] [--server-key KEY --key KEY]
 *
 * Publishes the message N times (default 1), then DISCONNECTs and waits for
 * the OK. With --confirm, prints one JSON line per message with its
 * confirmation, the sum of its ACKEDs:
 *   {"routed":N,"acked":N,"delivered":N,"dropped":N,"errors":[...]}
 * ERRORs that refer to no pending call (an unconfirmed publish refused) are
 * printed as {"error":CODE,"channel":HEX,"ref":HEX,"text":...}, and
 * ,"retry_after":MS before the } when the ERROR gives one. (Compact JSON,
 * byte for byte what interop/node/zb-pub.js prints.)
 *
 * --raw-garbage: after joining, first send a fixed list of malformed messages
 * (see GARBAGE below), each of which the broker answers with one ERROR, then
 * publish as usual (when --topic is given); the ERRORs are printed as above,
 * in the order received.
 *
 * --batch-commands: ask for batches of commands in the HELLO. If the WELCOME
 * offers them, publish up to WINDOW messages at a time without waiting in
 * between, as BATCHes (zb_client_publish_n), and print the confirmations of
 * each window in order once all are in (a window with handler errors is the
 * last, as one message with them is without the option). At the end, print to stderr
 *   {"batch_commands":B,"batches_in":N,"entries_in":N,"batches_out":N,"entries_out":N}
 * (B: whether the WELCOME offered them; the BROKER_BATCHes received and the
 * BATCHes sent, and their entries).
 *
 * --server-key KEY --key KEY: connect over CURVE, as `zmqbus pub` does: the
 * broker's public key (Z85 text or its NAME.key file) and this client's key
 * (its NAME.key_secret file, a Z85 secret key, or PUBLIC:SECRET in Z85).
 *
 * Exit status: 0 done, 1 failure (timeout, refusal, stray ERROR outside
 * --raw-garbage), 2 usage, 3 a confirmation reported handler errors,
 * 5 the broker refused the handshake (its key, or none).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cliutil.h"
#include "zbclient.h"

#define MAX_HEADERS 32
#define WINDOW 256 /* messages published at a time with --batch-commands */

static void usage(void)
{
    die(2, "usage: zb-pub --endpoint EP --channel UUID --topic T [--header K=V ...]\n"
           "              [--payload TEXT | --payload-hex HEX | --payload-stdin]\n"
           "              [--count N] [--confirm] [--timeout MS] [--name NAME] [--raw-garbage]\n"
           "              [--batch-commands] [--server-key KEY --key KEY]");
}

static zb_buf read_stdin(void)
{
    zb_buf b = {NULL, 0};
    size_t cap = 0, n;
    do {
        if (b.size == cap) {
            cap = cap ? 2 * cap : 65536;
            b.data = realloc(b.data, cap);
            if (!b.data)
                die(1, "zb-pub: out of memory");
        }
        n = fread(b.data + b.size, 1, cap - b.size, stdin);
        b.size += n;
    } while (n > 0);
    return b;
}

static void print_confirmation(const zb_confirmation *conf)
{
    size_t i;
    printf("{\"routed\":%u,\"acked\":%u,\"delivered\":%llu,\"dropped\":%llu,\"errors\":[",
           conf->routed, conf->acked, (unsigned long long)conf->delivered,
           (unsigned long long)conf->dropped);
    for (i = 0; i < conf->n_errors; i++) {
        printf(i ? "," : "");
        json_text(stdout, conf->errors[i], strlen(conf->errors[i]));
    }
    printf("]}\n");
    fflush(stdout);
}

/* Print the stray ERRORs; returns how many there were. */
static size_t print_stray_errors(zb_client *c)
{
    size_t n, i;
    zb_stray_error *errors = zb_client_take_stray_errors(c, &n);
    for (i = 0; i < n; i++) {
        printf("{\"error\":%u,\"channel\":", errors[i].code);
        json_hex(stdout, (zb_bytes){errors[i].channel.data, errors[i].channel.size});
        printf(",\"ref\":");
        json_hex(stdout, (zb_bytes){errors[i].ref.data, errors[i].ref.size});
        printf(",\"text\":");
        json_text(stdout, errors[i].text, strlen(errors[i].text));
        if (errors[i].retry_after >= 0)
            printf(",\"retry_after\":%lld", (long long)errors[i].retry_after);
        printf("}\n");
    }
    fflush(stdout);
    zb_stray_errors_free(errors, n);
    return n;
}

/* With batches of commands: publish count messages, WINDOW at a time without
 * waiting in between, and print each window's confirmations once all are in.
 * Returns the exit status so far. */
static int publish_windows(zb_client *c, const char *topic, const zb_header *headers,
                           size_t n_headers, zb_bytes payload, long count, int confirm,
                           int timeout_ms)
{
    zb_confirmation confs[WINDOW];
    int status = 0;
    while (count > 0 && status == 0) {
        size_t i, n = count < WINDOW ? (size_t)count : WINDOW;
        int rc = zb_client_publish_n(c, topic, headers, n_headers, payload, n,
                                     confirm ? confs : NULL, timeout_ms);
        if (rc)
            fprintf(stderr, "zb-pub: publish failed: %s\n", zb_client_last_error(c));
        for (i = 0; confirm && i < n; i++) {
            if (rc == 0) {
                print_confirmation(&confs[i]);
                if (confs[i].n_errors)
                    status = 3;
            }
            zb_confirmation_free(&confs[i]);
        }
        if (rc)
            return 1;
        count -= (long)n;
    }
    return status;
}

/* Malformed messages, each refused with one ERROR by a broker that the
 * sending peer has joined (the expected code in the comment). */
static int send_garbage(zb_client *c)
{
    const uint8_t *ch = zb_client_channel(c);
    static const uint8_t other[16] = {0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88,
                                      0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00};
    static const uint8_t ref33[33] = {0};
    static const uint8_t bad_msgpack[1] = {0xc1};
    static const uint8_t ack_body[4] = {0x93, 0x01, 0x00, 0x90};
    static const uint8_t body[] = {0x94, 0xc4, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                   15, 16, 0xd6, 0xff, 0x65, 0x53, 0xf1, 0x00, 0x80, 0xc4, 0x00};
    zb_buf big;
    zb_bytes B = {body, sizeof body}, C = {ch, 16}, O = {other, 16}, E = {NULL, 0};
#define S(text) ((zb_bytes){(const uint8_t *)(text), sizeof(text) - 1})
    struct {
        size_t n;
        zb_bytes f[6];
    } cases[] = {
        {5, {S("XY\x01\x04"), C, E, S("t"), B}},                /* 505: foreign signature */
        {5, {S("ZB\x02\x04"), C, E, S("t"), B}},                /* 505: version 2 */
        {3, {S("ZB\x01"), C, E}},                               /* 505: 3-octet header */
        {6, {E, S("ZB\x01\x04"), C, E, S("t"), B}},             /* 505: REQ-style delimiter */
        {3, {S("ZB\x01\x7f"), C, E}},                           /* 405: unknown command */
        {6, {S("ZB\x01\x83"), C, S("tk"), S("t"), B, S("\0\0\0\1")}}, /* 405: DELIVER from a client */
        {4, {S("ZB\x01\x04"), C, E, S("t")}},                   /* 400: PUBLISH of 4 frames */
        {5, {S("ZB\x01\x04"), {ch, 15}, E, S("t"), B}},         /* 400: 15-octet channel */
        {5, {S("ZB\x01\x04"), C, {ref33, 33}, S("t"), B}},      /* 400: 33-octet ref */
        {5, {S("ZB\x01\x04"), C, S("g10"), S("orders.*"), B}},  /* 406: publish to a pattern */
        {5, {S("ZB\x01\x04"), O, E, S("t"), B}},                /* 409: another channel */
        {6, {S("ZB\x01\x02"), C, S("g12"), S("\0\0\1"), S("a"), E}},  /* 400: 3-octet sid */
        {6, {S("ZB\x01\x02"), C, S("g13"), S("\0\0\0\1"), S("a.>.b"), E}}, /* 406: bad pattern */
        {3, {S("ZB\x01\x01"), C, {bad_msgpack, 1}}},            /* 422: HELLO body not msgpack */
        {4, {S("ZB\x01\x05"), C, E, {ack_body, 4}}},            /* 400: ACK with empty token */
        {5, {S("ZB\x01\x07"), C, E, S("t"), B}},                /* 400: REQUEST with empty ref */
        {5, {S("ZB\x01\x04"), C, S("g17"), S("t"), E}},         /* 413: body too large (below) */
        {4, {S("ZB\x01\x03"), C, S("g18"), S("\0\0\1")}},       /* 400: sids of 3 octets */
        {3, {S("ZB\x01\x01"), O, S("\x80")}},                   /* 409: HELLO on another channel */
    };
#undef S
    size_t i;
    int rc = 0;
    /* a body one octet over the limit: the broker never decodes it */
    big.size = zb_client_max_message_size(c) + 1;
    big.data = calloc(1, big.size);
    if (!big.data)
        return -1;
    cases[16].f[4] = (zb_bytes){big.data, big.size};
    for (i = 0; rc == 0 && i < sizeof cases / sizeof cases[0]; i++)
        rc = zb_client_send_raw(c, cases[i].f, cases[i].n);
    zb_buf_free(&big);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"endpoint", required_argument, 0, 'e'},  {"channel", required_argument, 0, 'c'},
        {"topic", required_argument, 0, 'T'},     {"header", required_argument, 0, 'H'},
        {"payload", required_argument, 0, 'p'},   {"payload-hex", required_argument, 0, 'x'},
        {"payload-stdin", no_argument, 0, 'i'},   {"count", required_argument, 0, 'n'},
        {"confirm", no_argument, 0, 'C'},         {"timeout", required_argument, 0, 't'},
        {"name", required_argument, 0, 'N'},      {"raw-garbage", no_argument, 0, 'G'},
        {"batch-commands", no_argument, 0, 'B'},  {"server-key", required_argument, 0, 'S'},
        {"key", required_argument, 0, 'K'},       {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *endpoint = NULL, *channel_text = NULL, *topic = NULL, *name = NULL;
    const char *server_key = NULL, *key = NULL;
    zb_header headers[MAX_HEADERS];
    size_t n_headers = 0, n_payload_options = 0;
    zb_buf payload = {NULL, 0};
    long count = 1, timeout_ms = 5000, i;
    int confirm = 0, garbage = 0, batch_commands = 0, opt, rc, status = 0;
    uint8_t channel[16];
    zb_client *c;
    int offered;

    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 'c': channel_text = optarg; break;
        case 'T': topic = optarg; break;
        case 'H': {
            char *eq = strchr(optarg, '=');
            if (!eq || n_headers == MAX_HEADERS)
                die(2, "zb-pub: --header takes KEY=VALUE (at most %d)", MAX_HEADERS);
            headers[n_headers].key = optarg;
            headers[n_headers].key_len = (size_t)(eq - optarg);
            headers[n_headers].value = eq + 1;
            headers[n_headers].value_len = strlen(eq + 1);
            n_headers++;
            break;
        }
        case 'p':
            zb_buf_free(&payload);
            payload.size = strlen(optarg);
            payload.data = malloc(payload.size + 1);
            if (!payload.data)
                die(1, "zb-pub: out of memory");
            memcpy(payload.data, optarg, payload.size);
            n_payload_options++;
            break;
        case 'x':
            zb_buf_free(&payload);
            if (zb_hex_decode(optarg, &payload))
                die(2, "zb-pub: --payload-hex: not hex");
            n_payload_options++;
            break;
        case 'i':
            zb_buf_free(&payload);
            payload = read_stdin();
            n_payload_options++;
            break;
        case 'n': count = parse_count("--count", optarg); break;
        case 'C': confirm = 1; break;
        case 't': timeout_ms = parse_count("--timeout", optarg); break;
        case 'N': name = optarg; break;
        case 'G': garbage = 1; break;
        case 'B': batch_commands = 1; break;
        case 'S': server_key = optarg; break;
        case 'K': key = optarg; break;
        default: usage();
        }
    }
    if (!endpoint || !channel_text || (!topic && !garbage) || n_payload_options > 1 || optind != argc)
        usage();
    if (zb_parse_channel(channel_text, channel))
        die(2, "zb-pub: --channel: not a UUID: %s", channel_text);

    c = connect_client("zb-pub", endpoint, server_key, key);
    zb_client_ask_batch_commands(c, batch_commands);
    if ((rc = zb_client_hello(c, channel, name, (int)timeout_ms))) {
        fprintf(stderr, "zb-pub: join failed: %s\n", zb_client_last_error(c));
        zb_client_destroy(c);
        zb_buf_free(&payload);
        return rc == ZB_EAUTH ? EXIT_REFUSED : 1;
    }
    offered = zb_client_batching(c);
    if (garbage && send_garbage(c)) {
        fprintf(stderr, "zb-pub: sending garbage failed: %s\n", zb_client_last_error(c));
        status = 1;
    }
    if (offered && topic && status == 0)
        status = publish_windows(c, topic, headers, n_headers,
                                 (zb_bytes){payload.data, payload.size}, count, confirm,
                                 (int)timeout_ms);
    for (i = 0; !offered && topic && status == 0 && i < count; i++) {
        zb_confirmation conf;
        rc = zb_client_publish(c, topic, headers, n_headers, (zb_bytes){payload.data, payload.size},
                               confirm ? &conf : NULL, (int)timeout_ms);
        if (rc) {
            fprintf(stderr, "zb-pub: publish failed: %s\n", zb_client_last_error(c));
            status = 1;
            if (confirm)
                zb_confirmation_free(&conf);
            break;
        }
        if (confirm) {
            print_confirmation(&conf);
            if (conf.n_errors)
                status = 3;
            zb_confirmation_free(&conf);
        }
    }
    /* the OK to DISCONNECT comes after every reply to what was sent before */
    if ((rc = zb_client_disconnect(c, (int)timeout_ms))) {
        fprintf(stderr, "zb-pub: disconnect failed: %s\n", zb_client_last_error(c));
        status = 1;
    }
    if (print_stray_errors(c) && !garbage && status == 0)
        status = 1;
    if (batch_commands)
        print_batch_stats(c, offered);
    zb_client_destroy(c);
    zb_buf_free(&payload);
    return status;
}
