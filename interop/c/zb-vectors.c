/* zb-vectors: check the zbclient codec against tests/vectors/.
 *
 *   zb-vectors DIR        (DIR holds valid.json, malformed.json, bodies.json)
 *
 * valid.json:     client messages are produced byte for byte by the encoders
 *                 from their fields and decoded body, and their bodies
 *                 decode to the stated values; the broker parser refuses them
 *                 with 405. Broker messages parse to the stated command and
 *                 fields, and their bodies decode to the stated values; the
 *                 entries of a DELIVER_BATCH read back as the stated sids,
 *                 topics and bodies, and the bodies decode as message bodies.
 *                 The entries of a BATCH or BROKER_BATCH read back as the
 *                 stated messages, whose bodies decode to the stated values;
 *                 each BATCH entry is produced byte for byte by its encoder
 *                 and the BATCH by zb_encode_batch from them; each
 *                 BROKER_BATCH entry parses alone (or is refused alone with
 *                 the stated code).
 * malformed.json: broker messages are refused with the stated code; client
 *                 messages are refused by the matching encoder with the
 *                 stated code where the encoder checks that rule (field
 *                 sizes 400, text 406, HELLO body 422, BATCH entries 400).
 * bodies.json:    valid bodies decode to the stated values and, when in the
 *                 form this encoder writes, are re-encoded byte for byte;
 *                 malformed bodies are refused with 422.
 * Client messages of commands this client never sends (HEARTBEAT, STATS,
 * PUBLISH_BATCH) are skipped and counted. (session.json holds refusals that
 * depend on broker state, and exchanges.json what a broker sends: nothing
 * for a client codec to check beyond the messages valid.json has.)
 * Vectors of an optional feature this client does not implement ("feature":
 * "streams": the durable-stream commands) are skipped and counted by feature.
 *
 * Prints one line per failure and a summary; exit status 0 when all pass.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "zbclient.h"

static int checks, failures, skipped;
static const char *current_file, *current_name;

/* The optional features of the spec this client implements: none yet (not
 * the durable streams). A vector marked with another feature is skipped. */
static const char *const features[] = {NULL};

/* Features met that this client lacks, with how many vectors each skipped
 * (past MAX_LACKING features, the vectors of the others are skipped uncounted). */
#define MAX_LACKING 8
static struct {
    char name[32];
    int vectors;
} lacking[MAX_LACKING];
static size_t n_lacking;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    checks++;
    if (ok)
        return;
    failures++;
    printf("FAIL %s %s: ", current_file, current_name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

/* ---- small helpers ---- */

static const char *str_of(const json *j)
{
    return j && j->type == JSON_STRING ? j->text : "";
}

/* Hex text to bytes (exits on malformed vector files). */
static zb_buf hex(const json *j)
{
    zb_buf b;
    if (zb_hex_decode(str_of(j), &b)) {
        printf("FAIL %s %s: bad hex in vector file\n", current_file, current_name);
        exit(1);
    }
    return b;
}

static zb_bytes view(const zb_buf *b)
{
    return (zb_bytes){b->data, b->size};
}

static int bytes_eq(zb_bytes a, zb_bytes b)
{
    return a.size == b.size && (a.size == 0 || memcmp(a.data, b.data, a.size) == 0);
}

static int field_eq_hex(zb_bytes actual, const json *expected)
{
    zb_buf e = hex(expected);
    int eq = bytes_eq(actual, view(&e));
    zb_buf_free(&e);
    return eq;
}

static int field_eq_text(zb_bytes actual, const json *expected)
{
    return expected && expected->type == JSON_STRING &&
           bytes_eq(actual, (zb_bytes){(const uint8_t *)expected->text, expected->len});
}

static uint64_t number(const json *j)
{
    return j && j->type == JSON_NUMBER ? strtoull(j->text, NULL, 10) : UINT64_MAX;
}

/* "timestamp_ns" (any size, maybe negative) to seconds and nanoseconds. */
static zb_time parse_ns(const json *j)
{
    zb_time t = {0, 0};
    const char *s = j ? j->text : "0";
    int negative = *s == '-';
    size_t len, split;
    char sec[32] = "0", nsec[16] = "0";
    if (negative)
        s++;
    len = strlen(s);
    split = len > 9 ? len - 9 : 0;
    if (split)
        snprintf(sec, sizeof sec, "%.*s", (int)split, s);
    snprintf(nsec, sizeof nsec, "%s", s + split);
    t.sec = strtoll(sec, NULL, 10);
    t.nsec = (uint32_t)strtoul(nsec, NULL, 10);
    if (negative) {
        t.sec = -t.sec;
        if (t.nsec) {
            t.sec -= 1;
            t.nsec = 1000000000u - t.nsec;
        }
    }
    return t;
}

static zb_header *headers_of(const json *obj, size_t *n)
{
    zb_header *h;
    size_t i;
    *n = obj ? obj->count : 0;
    h = calloc(*n ? *n : 1, sizeof *h);
    for (i = 0; h && i < *n; i++) {
        h[i].key = obj->keys[i];
        h[i].key_len = strlen(obj->keys[i]);
        h[i].value = obj->items[i]->text;
        h[i].value_len = obj->items[i]->len;
    }
    return h;
}

/* True (and counted) when vector `v` belongs to a feature this client lacks. */
static int lacks(const json *v)
{
    const json *feature = json_get(v, "feature");
    const char *name;
    size_t i;
    if (!feature)
        return 0;
    name = str_of(feature);
    for (i = 0; features[i]; i++)
        if (strcmp(features[i], name) == 0)
            return 0;
    for (i = 0; i < n_lacking; i++)
        if (strcmp(lacking[i].name, name) == 0)
            break;
    if (i == n_lacking && n_lacking < MAX_LACKING)
        snprintf(lacking[n_lacking++].name, sizeof lacking[0].name, "%s", name);
    if (i < n_lacking)
        lacking[i].vectors++;
    return 1;
}

/* ---- bodies ---- */

/* Decode body as `type` and compare with the expected decoded value. */
static void check_decoded(const char *type, zb_bytes body, const json *want)
{
    if (strcmp(type, "message") == 0 || strcmp(type, "reply") == 0) {
        int is_reply = type[0] == 'r';
        zb_message m;
        zb_time t = parse_ns(json_get(want, "timestamp_ns"));
        const json *headers = json_get(want, "headers");
        const json *error = json_get(want, "error");
        size_t i, j;
        int rc = zb_decode_message(&m, body, is_reply);
        check(rc == 0, "%s body refused with %d", type, rc);
        if (rc)
            return;
        check(field_eq_hex((zb_bytes){m.id, 16}, json_get(want, "id")), "id differs");
        check(m.timestamp.sec == t.sec && m.timestamp.nsec == t.nsec,
              "timestamp %" PRId64 ".%09u, want %" PRId64 ".%09u", m.timestamp.sec,
              m.timestamp.nsec, t.sec, t.nsec);
        check(field_eq_hex(m.payload, json_get(want, "payload")), "payload differs");
        check(headers && m.n_headers == headers->count, "header count differs");
        for (i = 0; headers && i < headers->count; i++) {
            int found = 0;
            for (j = 0; j < m.n_headers; j++)
                if (m.headers[j].key_len == strlen(headers->keys[i]) &&
                    memcmp(m.headers[j].key, headers->keys[i], m.headers[j].key_len) == 0)
                    found = field_eq_text((zb_bytes){(const uint8_t *)m.headers[j].value,
                                                     m.headers[j].value_len},
                                          headers->items[i]);
            check(found, "header %s missing or different", headers->keys[i]);
        }
        if (is_reply) {
            if (!error || error->type == JSON_NULL)
                check(!m.has_error, "error should be nil");
            else
                check(m.has_error && field_eq_text(m.error, error), "error text differs");
        }
        zb_message_free(&m);
    } else if (strcmp(type, "ack") == 0) {
        zb_ack a;
        const json *errors = json_get(want, "errors");
        size_t i;
        int rc = zb_decode_ack(&a, body);
        check(rc == 0, "ack body refused with %d", rc);
        if (rc)
            return;
        check(a.delivered == number(json_get(want, "delivered")), "delivered differs");
        check(a.dropped == number(json_get(want, "dropped")), "dropped differs");
        check(errors && a.n_errors == errors->count, "error count differs");
        for (i = 0; errors && i < errors->count && i < a.n_errors; i++)
            check(field_eq_text(a.errors[i], errors->items[i]), "error %zu differs", i);
        zb_ack_free(&a);
    } else if (strcmp(type, "hello") == 0) {
        check(zb_check_hello_body(body) == 0, "hello body refused");
    } else if (strcmp(type, "stats") == 0) {
        check(zb_check_stats_body(body) == 0, "stats body refused");
    } else if (strcmp(type, "welcome") == 0) {
        uint64_t max;
        int commands;
        const json *offered = json_get(json_get(want, "map"), "batch_commands");
        int rc = zb_decode_welcome_body_ex(body, &max, &commands);
        check(rc == 0, "welcome body refused with %d", rc);
        check(rc || max == number(json_get(json_get(want, "map"), "max_message_size")),
              "max_message_size differs");
        check(rc || commands == (offered && offered->type == JSON_BOOL && offered->boolean),
              "batch_commands differs");
    } else {
        check(0, "unknown body type %s", type);
    }
}

/* Encode the decoded value `want` as `type`; 0 when this encoder cannot
 * write that value (a HELLO map with other keys than "client" and, after
 * it, "batch_commands": true). */
static int encode_body(const char *type, const json *want, zb_buf *out)
{
    int rc;
    if (strcmp(type, "message") == 0 || strcmp(type, "reply") == 0) {
        zb_buf id = hex(json_get(want, "id")), payload = hex(json_get(want, "payload"));
        size_t n;
        zb_header *h = headers_of(json_get(want, "headers"), &n);
        zb_time t = parse_ns(json_get(want, "timestamp_ns"));
        const json *error = json_get(want, "error");
        zb_bytes err = {(const uint8_t *)str_of(error), error ? error->len : 0};
        if (type[0] == 'm')
            rc = zb_encode_message_body(out, id.data, t, h, n, view(&payload));
        else
            rc = zb_encode_reply_body(out, id.data, t, h, n, view(&payload),
                                      error && error->type == JSON_STRING ? &err : NULL);
        free(h);
        zb_buf_free(&id);
        zb_buf_free(&payload);
    } else if (strcmp(type, "ack") == 0) {
        const json *errors = json_get(want, "errors");
        size_t i, n = errors ? errors->count : 0;
        zb_bytes *e = calloc(n ? n : 1, sizeof *e);
        for (i = 0; e && i < n; i++)
            e[i] = (zb_bytes){(const uint8_t *)errors->items[i]->text, errors->items[i]->len};
        rc = zb_encode_ack_body(out, number(json_get(want, "delivered")),
                                number(json_get(want, "dropped")), e, n);
        free(e);
    } else if (strcmp(type, "hello") == 0) {
        const json *map = json_get(want, "map");
        const json *client = json_get(map, "client");
        if (map->count == 0)
            rc = zb_encode_hello_body(out, NULL);
        else if (map->count == 1 && client && client->type == JSON_STRING)
            rc = zb_encode_hello_body(out, client->text);
        else if (map->count == 2 && client && client->type == JSON_STRING &&
                 strcmp(map->keys[0], "client") == 0 &&
                 strcmp(map->keys[1], "batch_commands") == 0 &&
                 map->items[1]->type == JSON_BOOL && map->items[1]->boolean)
            rc = zb_encode_hello_body_ex(out, client->text, 1);
        else
            return 0;
    } else {
        return 0; /* WELCOME bodies are written by brokers */
    }
    check(rc == 0, "encoding the %s body failed with %d", type, rc);
    return rc == 0;
}

/* ---- messages ---- */

typedef struct {
    size_t count;
    zb_buf bufs[16];
    zb_bytes f[16];
} frame_set;

static void frames_load(frame_set *fs, const json *frames)
{
    size_t i;
    fs->count = frames->count < 16 ? frames->count : 16;
    for (i = 0; i < fs->count; i++) {
        fs->bufs[i] = hex(frames->items[i]);
        fs->f[i] = view(&fs->bufs[i]);
    }
}

static void frames_free(frame_set *fs)
{
    size_t i;
    for (i = 0; i < fs->count; i++)
        zb_buf_free(&fs->bufs[i]);
}

static int command_byte(const char *name)
{
    static const struct {
        const char *name;
        int byte;
    } table[] = {{"HELLO", ZB_HELLO},     {"SUBSCRIBE", ZB_SUBSCRIBE}, {"UNSUBSCRIBE", ZB_UNSUBSCRIBE},
                 {"PUBLISH", ZB_PUBLISH}, {"ACK", ZB_ACK},             {"DISCONNECT", ZB_DISCONNECT},
                 {"REQUEST", ZB_REQUEST}, {"REPLY", ZB_REPLY},         {"WELCOME", ZB_WELCOME},
                 {"OK", ZB_OK},           {"DELIVER", ZB_DELIVER},     {"ROUTED", ZB_ROUTED},
                 {"ACKED", ZB_ACKED},     {"ASK", ZB_ASK},             {"ANSWER", ZB_ANSWER},
                 {"BROKER_HEARTBEAT", ZB_BROKER_HEARTBEAT},            {"BYE", ZB_BYE},
                 {"STATS_REPLY", ZB_STATS_REPLY},                      {"DROPPED", ZB_DROPPED},
                 {"DELIVER_BATCH", ZB_DELIVER_BATCH},                  {"ERROR", ZB_ERROR},
                 {"BATCH", ZB_BATCH},                                  {"BROKER_BATCH", ZB_BROKER_BATCH}};
    size_t i;
    for (i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, name) == 0)
            return table[i].byte;
    return -1;
}

static int encode_from_frames(int command, const zb_bytes *f, size_t n, zb_msg *msg);

/* The message a command entry stands for: header, channel, its frames. */
static size_t entry_message(const zb_command_entry *e, zb_bytes channel, uint8_t header[4],
                            zb_bytes *parts)
{
    size_t i;
    memcpy(header, "ZB\x01", 3);
    header[3] = (uint8_t)e->command;
    parts[0] = (zb_bytes){header, 4};
    parts[1] = channel;
    for (i = 0; i < e->count; i++)
        parts[2 + i] = e->frames[i];
    return 2 + e->count;
}

/* A BATCH from its frames: each entry encoded alone by its encoder, then
 * zb_encode_batch. 400 for an entries frame that is not a run of client
 * command entries; an entry's encoder's code for an entry it refuses. */
static int encode_batch_from_frames(const zb_bytes *f, zb_msg *msg)
{
    zb_command_entry e;
    zb_msg *msgs = NULL;
    size_t pos = 0, n = 0, i;
    int rc = zb_check_command_entries(f[2], ZB_CLIENT_ENTRIES);
    while (rc == 0 && pos < f[2].size) {
        uint8_t header[4];
        zb_bytes parts[2 + ZB_MAX_ENTRY_FRAMES];
        size_t count;
        zb_msg *grown = realloc(msgs, (n + 1) * sizeof *msgs);
        if (!grown) {
            rc = ZB_ENOMEM;
            break;
        }
        msgs = grown;
        zb_next_command_entry(f[2], &pos, ZB_CLIENT_ENTRIES, &e);
        count = entry_message(&e, f[1], header, parts);
        rc = encode_from_frames(e.command, parts, count, &msgs[n]);
        if (rc == 0)
            n++;
    }
    if (rc == 0)
        rc = zb_encode_batch(msg, f[1].data, msgs, n);
    for (i = 0; i < n; i++)
        zb_msg_free(&msgs[i]);
    free(msgs);
    return rc;
}

/* Encode a client message of `command` from frames-shaped fields (the body
 * frame as given). Returns the encoder's code, or -100 when the frames do
 * not fit the encoder's signature (wrong count, channel or sid size). */
static int encode_from_frames(int command, const zb_bytes *f, size_t n, zb_msg *msg)
{
    static const size_t counts[9] = {0, 3, 6, 4, 5, 4, 3, 5, 4};
    msg->count = 0;
    if (command == ZB_BATCH)
        return n == 3 && f[1].size == 16 ? encode_batch_from_frames(f, msg) : -100;
    if (command < ZB_HELLO || command > ZB_REPLY || n != counts[command] || f[1].size != 16)
        return -100;
    switch (command) {
    case ZB_HELLO: return zb_encode_hello(msg, f[1].data, f[2]);
    case ZB_SUBSCRIBE:
        if (f[3].size != 4)
            return -100;
        return zb_encode_subscribe(msg, f[1].data, f[2], f[3].data, f[4], f[5]);
    case ZB_UNSUBSCRIBE: return zb_encode_unsubscribe(msg, f[1].data, f[2], f[3]);
    case ZB_PUBLISH: return zb_encode_publish(msg, f[1].data, f[2], f[3], f[4]);
    case ZB_ACK: return zb_encode_ack(msg, f[1].data, f[2], f[3]);
    case ZB_DISCONNECT: return zb_encode_disconnect(msg, f[1].data, f[2]);
    case ZB_REQUEST: return zb_encode_request(msg, f[1].data, f[2], f[3], f[4]);
    default: return zb_encode_reply(msg, f[1].data, f[2], f[3]);
    }
}

static void check_msg_equals(const zb_msg *msg, const frame_set *fs)
{
    size_t i;
    int same = msg->count == fs->count;
    for (i = 0; same && i < fs->count; i++)
        same = bytes_eq(view(&msg->frames[i]), fs->f[i]);
    check(same, "encoded frames differ from the vector");
}

/* The entries of a BATCH (side ZB_CLIENT_ENTRIES) or BROKER_BATCH against
 * the vector's list of {command, frames, body, code}: each reads back as the
 * stated message; a client entry is produced byte for byte by its encoder, a
 * broker entry parses alone (or is refused with the stated code); bodies
 * decode to the stated values. */
static void check_command_entries(zb_bytes channel, zb_bytes entries, int side, const json *want)
{
    zb_command_entry e;
    size_t pos = 0, i;
    if (!want) {
        check(0, "the vector lists no entries");
        return;
    }
    for (i = 0; pos < entries.size; i++) {
        const json *w = i < want->count ? want->items[i] : NULL;
        const json *body = json_get(w, "body");
        const json *code = json_get(w, "code");
        uint8_t header[4];
        zb_bytes parts[2 + ZB_MAX_ENTRY_FRAMES];
        frame_set stated;
        size_t count, k;
        int rc = zb_next_command_entry(entries, &pos, side, &e), same;
        check(rc == 0, "entry %zu refused with %d", i, rc);
        if (rc)
            return;
        check(w != NULL, "more entries than the vector lists");
        if (!w)
            return;
        check(e.command == command_byte(str_of(json_get(w, "command"))), "entry %zu: wrong command",
              i);
        count = entry_message(&e, channel, header, parts);
        frames_load(&stated, json_get(w, "frames"));
        same = stated.count == count;
        for (k = 0; same && k < count; k++)
            same = bytes_eq(parts[k], stated.f[k]);
        check(same, "entry %zu: the message differs from the vector", i);
        frames_free(&stated);
        if (side == ZB_BROKER_ENTRIES) {
            zb_broker_msg m;
            long want_code = code ? (long)number(code) : 0;
            rc = zb_parse_broker(&m, parts, count);
            check(rc == want_code, "entry %zu: parsed with %d, want %ld", i, rc, want_code);
            if (body) /* DELIVER and ASK: frame 4, before the sids; else the last frame */
                check_decoded(str_of(json_get(body, "type")),
                              parts[e.command == ZB_DELIVER || e.command == ZB_ASK ? 4 : count - 1],
                              body);
        } else {
            zb_msg msg;
            frame_set again = {0};
            rc = encode_from_frames(e.command, parts, count, &msg);
            check(rc == (code ? (long)number(code) : 0), "entry %zu: encoder gave %d", i, rc);
            if (rc == 0) {
                for (k = 0; k < count; k++)
                    again.f[k] = parts[k];
                again.count = count;
                check_msg_equals(&msg, &again);
                zb_msg_free(&msg);
            }
            if (body) /* the body is the last frame */
                check_decoded(str_of(json_get(body, "type")), parts[count - 1], body);
        }
    }
    check(i == want->count, "%zu entries, want %zu", i, want->count);
}

static void check_valid_client(const json *v, const frame_set *fs)
{
    const json *fields = json_get(v, "fields");
    const json *body = json_get(v, "body");
    const char *type = str_of(json_get(body, "type"));
    int command = command_byte(str_of(json_get(v, "command")));
    zb_broker_msg bm;
    zb_bytes f[6];
    zb_buf ch = hex(json_get(fields, "channel")), ref = {0, 0}, sid = {0, 0}, body_buf = {0, 0};
    /* the frames from the stated fields; the body frame as given */
    zb_msg msg;
    size_t i;
    int rc;

    check(zb_parse_broker(&bm, fs->f, fs->count) == ZB_UNKNOWN_COMMAND,
          "the broker-message parser should refuse a client message with 405");
    if (body) {
        /* the body: decoded, and written byte for byte by the body encoder */
        zb_bytes given = fs->f[fs->count - 1];
        check_decoded(type, given, body);
        if (encode_body(type, body, &body_buf))
            check(bytes_eq(view(&body_buf), given), "encoded %s body differs from the vector", type);
        zb_buf_free(&body_buf);
    }
    for (i = 0; i < fs->count; i++)
        f[i] = fs->f[i];
    f[1] = view(&ch);
    if (json_get(fields, "ref")) {
        ref = hex(json_get(fields, "ref"));
        f[2] = view(&ref);
    }
    if (json_get(fields, "token")) {
        ref = hex(json_get(fields, "token"));
        f[2] = view(&ref);
    }
    switch (command) {
    case ZB_SUBSCRIBE:
        sid = hex(json_get(fields, "sid"));
        f[3] = view(&sid);
        f[4] = (zb_bytes){(const uint8_t *)str_of(json_get(fields, "pattern")),
                          json_get(fields, "pattern")->len};
        f[5] = (zb_bytes){(const uint8_t *)str_of(json_get(fields, "queue")),
                          json_get(fields, "queue")->len};
        break;
    case ZB_UNSUBSCRIBE:
        sid = hex(json_get(fields, "sids"));
        f[3] = view(&sid);
        break;
    case ZB_PUBLISH:
    case ZB_REQUEST:
        f[3] = (zb_bytes){(const uint8_t *)str_of(json_get(fields, "topic")),
                          json_get(fields, "topic")->len};
        break;
    default:
        break;
    }
    rc = encode_from_frames(command, f, fs->count, &msg);
    if (rc == -100) {
        skipped++; /* a command this client does not send (HEARTBEAT, STATS, PUBLISH_BATCH) */
        goto done;
    }
    check(rc == 0, "encoder refused with %d", rc);
    if (rc == 0) {
        check_msg_equals(&msg, fs);
        zb_msg_free(&msg);
    }
    if (command == ZB_BATCH)
        check_command_entries(fs->f[1], fs->f[2], ZB_CLIENT_ENTRIES, json_get(v, "entries"));
done:
    zb_buf_free(&ch);
    zb_buf_free(&ref);
    zb_buf_free(&sid);
}

/* The entries of a DELIVER_BATCH against the vector's list of
 * {sids, topic, body}. */
static void check_deliver_entries(zb_bytes entries, const json *want)
{
    zb_deliver_entry e;
    size_t pos = 0, i;
    for (i = 0; pos < entries.size; i++) {
        const json *w = i < want->count ? want->items[i] : NULL;
        int rc = zb_next_deliver_entry(entries, &pos, &e);
        zb_message m;
        check(rc == 0, "entry %zu refused with %d", i, rc);
        if (rc)
            return;
        check(w != NULL, "more entries than the vector lists");
        if (!w)
            return;
        check(field_eq_hex(e.sids, json_get(w, "sids")), "entry %zu: sids differ", i);
        check(field_eq_text(e.topic, json_get(w, "topic")), "entry %zu: topic differs", i);
        check(field_eq_hex(e.body, json_get(w, "body")), "entry %zu: body differs", i);
        rc = zb_decode_message(&m, e.body, 0);
        check(rc == 0, "entry %zu: message body refused with %d", i, rc);
        if (rc == 0)
            zb_message_free(&m);
    }
    check(i == want->count, "%zu entries, want %zu", i, want->count);
}

static void check_valid_broker(const json *v, const frame_set *fs)
{
    const json *fields = json_get(v, "fields");
    const json *body = json_get(v, "body");
    zb_broker_msg m;
    int rc = zb_parse_broker(&m, fs->f, fs->count);
    check(rc == 0, "refused with %d", rc);
    if (rc)
        return;
    check(m.command == command_byte(str_of(json_get(v, "command"))), "wrong command");
    check(field_eq_hex(m.channel, json_get(fields, "channel")), "channel differs");
    if (json_get(fields, "ref"))
        check(field_eq_hex(m.ref, json_get(fields, "ref")), "ref differs");
    if (json_get(fields, "token"))
        check(field_eq_hex(m.token, json_get(fields, "token")), "token differs");
    if (json_get(fields, "sids"))
        check(field_eq_hex(m.sids, json_get(fields, "sids")), "sids differ");
    if (json_get(fields, "counts"))
        check(field_eq_hex(m.counts, json_get(fields, "counts")), "counts differ");
    if (json_get(fields, "entries"))
        check(field_eq_hex(m.entries, json_get(fields, "entries")), "entries differ");
    if (json_get(fields, "topic"))
        check(field_eq_text(m.topic, json_get(fields, "topic")), "topic differs");
    if (json_get(fields, "text"))
        check(field_eq_text(m.text, json_get(fields, "text")), "text differs");
    if (json_get(fields, "count"))
        check(m.count == number(json_get(fields, "count")), "count differs");
    if (json_get(fields, "code"))
        check(m.code == number(json_get(fields, "code")), "code differs");
    if (json_get(fields, "retry_after")) {
        /* null: the frame is empty */
        const json *want = json_get(fields, "retry_after");
        check(want->type == JSON_NULL ? m.retry_after == -1
                                      : m.retry_after == (int64_t)number(want),
              "retry_after differs");
    }
    if (json_get(fields, "throttled"))
        check(m.throttled == number(json_get(fields, "throttled")), "throttled differs");
    if (body)
        check_decoded(str_of(json_get(body, "type")), m.body, body);
    if (m.command == ZB_BROKER_BATCH)
        check_command_entries(m.channel, m.entries, ZB_BROKER_ENTRIES, json_get(v, "entries"));
    else if (json_get(v, "entries"))
        check_deliver_entries(m.entries, json_get(v, "entries"));
}

static void run_valid(const json *root)
{
    const json *vectors = json_get(root, "vectors");
    size_t i;
    for (i = 0; i < vectors->count; i++) {
        const json *v = vectors->items[i];
        frame_set fs;
        if (lacks(v))
            continue;
        current_name = str_of(json_get(v, "name"));
        frames_load(&fs, json_get(v, "frames"));
        if (strcmp(str_of(json_get(v, "direction")), "client") == 0)
            check_valid_client(v, &fs);
        else
            check_valid_broker(v, &fs);
        frames_free(&fs);
    }
}

static void run_malformed(const json *root)
{
    const json *vectors = json_get(root, "vectors");
    size_t i;
    for (i = 0; i < vectors->count; i++) {
        const json *v = vectors->items[i];
        long code = (long)number(json_get(v, "code"));
        frame_set fs;
        zb_broker_msg m;
        int rc;
        if (lacks(v))
            continue;
        current_name = str_of(json_get(v, "name"));
        frames_load(&fs, json_get(v, "frames"));
        if (strcmp(str_of(json_get(v, "direction")), "broker") == 0) {
            rc = zb_parse_broker(&m, fs.f, fs.count);
            check(rc == code, "parsed with %d, want %ld", rc, code);
        } else {
            if ((code == 400 || code == 406 || code == 422) && fs.count >= 1 &&
                fs.f[0].size == 4 && memcmp(fs.f[0].data, "ZB\x01", 3) == 0) {
                zb_msg msg;
                rc = encode_from_frames(fs.f[0].data[3], fs.f, fs.count, &msg);
                if (rc != -100)
                    check(rc == code, "encoder gave %d, want %ld", rc, code);
                zb_msg_free(&msg);
            }
        }
        frames_free(&fs);
    }
}

static void run_bodies(const json *root)
{
    const json *valid = json_get(root, "valid"), *malformed = json_get(root, "malformed");
    size_t i;
    for (i = 0; i < valid->count; i++) {
        const json *v = valid->items[i];
        const char *type = str_of(json_get(v, "type"));
        zb_buf body, again = {0, 0};
        if (lacks(v))
            continue;
        body = hex(json_get(v, "body"));
        current_name = str_of(json_get(v, "name"));
        check_decoded(type, view(&body), json_get(v, "decoded"));
        /* re-encode when the body has the shape this encoder writes:
         * exactly 4 (message), 5 (reply) or 3 (ack) elements */
        if ((strcmp(type, "message") == 0 && body.data[0] == 0x94) ||
            (strcmp(type, "reply") == 0 && body.data[0] == 0x95) ||
            (strcmp(type, "ack") == 0 && body.data[0] == 0x93) || strcmp(type, "hello") == 0) {
            if (encode_body(type, json_get(v, "decoded"), &again))
                check(bytes_eq(view(&again), view(&body)), "re-encoded body differs");
        }
        zb_buf_free(&again);
        zb_buf_free(&body);
    }
    for (i = 0; i < malformed->count; i++) {
        const json *v = malformed->items[i];
        const char *type = str_of(json_get(v, "type"));
        zb_buf body;
        int rc;
        if (lacks(v))
            continue;
        body = hex(json_get(v, "body"));
        current_name = str_of(json_get(v, "name"));
        if (strcmp(type, "message") == 0 || strcmp(type, "reply") == 0) {
            zb_message m;
            rc = zb_decode_message(&m, view(&body), type[0] == 'r');
            if (rc == 0)
                zb_message_free(&m);
        } else if (strcmp(type, "ack") == 0) {
            zb_ack a;
            rc = zb_decode_ack(&a, view(&body));
            if (rc == 0)
                zb_ack_free(&a);
        } else if (strcmp(type, "hello") == 0) {
            rc = zb_check_hello_body(view(&body));
        } else if (strcmp(type, "stats") == 0) {
            rc = zb_check_stats_body(view(&body));
        } else {
            uint64_t max;
            rc = zb_decode_welcome_body(view(&body), &max);
        }
        check(rc == ZB_BAD_BODY, "decoded with %d, want 422", rc);
        zb_buf_free(&body);
    }
}

static json *load(const char *dir, const char *file)
{
    char path[4096], err[256];
    size_t len;
    char *text;
    json *j;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    text = json_read_file(path, &len);
    if (!text) {
        fprintf(stderr, "zb-vectors: cannot read %s\n", path);
        exit(1);
    }
    j = json_parse(text, len, err, sizeof err);
    free(text);
    if (!j) {
        fprintf(stderr, "zb-vectors: %s: %s\n", path, err);
        exit(1);
    }
    return j;
}

int main(int argc, char **argv)
{
    static const char *files[] = {"valid.json", "malformed.json", "bodies.json"};
    void (*runs[])(const json *) = {run_valid, run_malformed, run_bodies};
    size_t i;
    if (argc != 2) {
        fprintf(stderr, "usage: zb-vectors DIR\n");
        return 2;
    }
    for (i = 0; i < 3; i++) {
        json *root = load(argv[1], files[i]);
        current_file = files[i];
        runs[i](root);
        json_free(root);
    }
    printf("zb-vectors: %d checks, %d failures, %d client vectors skipped (commands not sent), "
           "vectors of features not implemented skipped:",
           checks, failures, skipped);
    for (i = 0; i < n_lacking; i++)
        printf("%s %d %s", i ? "," : "", lacking[i].vectors, lacking[i].name);
    printf("%s\n", n_lacking ? "" : " none");
    return failures ? 1 : 0;
}
