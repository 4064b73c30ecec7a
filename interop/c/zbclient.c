/* zbclient: a small zmqbus/1 client on libzmq and msgpack-c. See zbclient.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "zbclient.h"

#include <errno.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <zmq.h>

/* ------------------------------------------------------------------ */
/* small helpers                                                        */
/* ------------------------------------------------------------------ */

static const uint8_t SIGNATURE[2] = {0x5A, 0x42};
#define VERSION 0x01

/* Instants a receiver accepts: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z. */
#define MIN_SECONDS (-62135596800LL)
#define MAX_SECONDS (253402300799LL)

void zb_buf_free(zb_buf *buf)
{
    if (buf) {
        free(buf->data);
        buf->data = NULL;
        buf->size = 0;
    }
}

static int buf_set(zb_buf *buf, const void *data, size_t size)
{
    buf->data = malloc(size ? size : 1);
    if (!buf->data)
        return ZB_ENOMEM;
    if (size)
        memcpy(buf->data, data, size);
    buf->size = size;
    return 0;
}

static zb_bytes bytes_of(const void *data, size_t size)
{
    zb_bytes b = {(const uint8_t *)data, size};
    return b;
}

static zb_bytes bytes_str(const char *s)
{
    return bytes_of(s, s ? strlen(s) : 0);
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t get_u64(const uint8_t *p)
{
    return ((uint64_t)get_u32(p) << 32) | get_u32(p + 4);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)(v >> 32));
    put_u32(p + 4, (uint32_t)v);
}

zb_time zb_time_now(void)
{
    struct timespec ts;
    zb_time t;
    clock_gettime(CLOCK_REALTIME, &ts);
    t.sec = (int64_t)ts.tv_sec;
    t.nsec = (uint32_t)ts.tv_nsec;
    return t;
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* text rules                                                           */
/* ------------------------------------------------------------------ */

/* Decode one code point at s[*i]; -1 on invalid UTF-8. */
static int utf8_next(const uint8_t *s, size_t len, size_t *i, uint32_t *cp)
{
    uint8_t b = s[*i];
    uint32_t c, min;
    size_t n, k;
    if (b < 0x80) {
        *cp = b;
        *i += 1;
        return 0;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        n = 1;
        c = b & 0x1F;
        min = 0x80;
    } else if (b >= 0xE0 && b <= 0xEF) {
        n = 2;
        c = b & 0x0F;
        min = 0x800;
    } else if (b >= 0xF0 && b <= 0xF4) {
        n = 3;
        c = b & 0x07;
        min = 0x10000;
    } else {
        return -1; /* continuation octet, overlong lead (C0, C1) or over U+10FFFF */
    }
    if (*i + n >= len)
        return -1; /* truncated */
    for (k = 1; k <= n; k++) {
        uint8_t cb = s[*i + k];
        if ((cb & 0xC0) != 0x80)
            return -1;
        c = (c << 6) | (cb & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return -1;
    *cp = c;
    *i += n + 1;
    return 0;
}

int zb_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    uint32_t cp;
    while (i < len)
        if (utf8_next(s, len, &i, &cp) < 0)
            return 0;
    return 1;
}

/* The control and whitespace characters no token may contain. */
static int forbidden_char(uint32_t c)
{
    return c <= 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

int zb_check_name(const uint8_t *s, size_t len, int kind)
{
    size_t max = kind == ZB_QUEUE ? ZB_MAX_QUEUE : ZB_MAX_TOPIC;
    size_t start = 0;
    if (len < 1 || len > max || !zb_utf8_valid(s, len))
        return ZB_BAD_TOPIC;
    while (start <= len) {
        size_t end = start, i;
        while (end < len && s[end] != '.')
            end++;
        if (end == start)
            return ZB_BAD_TOPIC; /* empty token */
        if (kind == ZB_PATTERN && end - start == 1 && s[start] == '*') {
            /* a wildcard token */
        } else if (kind == ZB_PATTERN && end - start == 1 && s[start] == '>') {
            if (end != len)
                return ZB_BAD_TOPIC; /* '>' must be the last token */
        } else {
            i = start;
            while (i < end) {
                uint32_t cp;
                utf8_next(s, len, &i, &cp);
                if (cp == '*' || cp == '>' || forbidden_char(cp))
                    return ZB_BAD_TOPIC;
            }
        }
        start = end + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* client messages                                                      */
/* ------------------------------------------------------------------ */

void zb_msg_free(zb_msg *msg)
{
    size_t i;
    for (i = 0; i < msg->count; i++)
        zb_buf_free(&msg->frames[i]);
    msg->count = 0;
}

static int msg_add(zb_msg *msg, const void *data, size_t size)
{
    int rc = buf_set(&msg->frames[msg->count], data, size);
    if (rc == 0)
        msg->count++;
    return rc;
}

/* Start a message with its header and channel frames. */
static int msg_start(zb_msg *msg, int command, const uint8_t channel[16])
{
    uint8_t header[4] = {SIGNATURE[0], SIGNATURE[1], VERSION, (uint8_t)command};
    msg->count = 0;
    if (msg_add(msg, header, 4) || msg_add(msg, channel, ZB_CHANNEL_SIZE)) {
        zb_msg_free(msg);
        return ZB_ENOMEM;
    }
    return 0;
}

/* Add the remaining frames; free everything on failure. */
static int msg_finish(zb_msg *msg, const zb_bytes *frames, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (msg_add(msg, frames[i].data, frames[i].size)) {
            zb_msg_free(msg);
            return ZB_ENOMEM;
        }
    }
    return 0;
}

static int build(zb_msg *msg, int command, const uint8_t channel[16], const zb_bytes *frames,
                 size_t n)
{
    int rc = msg_start(msg, command, channel);
    return rc ? rc : msg_finish(msg, frames, n);
}

int zb_encode_hello(zb_msg *msg, const uint8_t channel[16], zb_bytes body)
{
    msg->count = 0;
    if (zb_check_hello_body(body))
        return ZB_BAD_BODY;
    return build(msg, ZB_HELLO, channel, &body, 1);
}

int zb_encode_subscribe(zb_msg *msg, const uint8_t channel[16], zb_bytes ref, const uint8_t sid[4],
                        zb_bytes pattern, zb_bytes queue)
{
    zb_bytes frames[4] = {ref, bytes_of(sid, ZB_SID_SIZE), pattern, queue};
    msg->count = 0;
    if (ref.size > ZB_MAX_REF)
        return ZB_BAD_FRAMES;
    if (zb_check_name(pattern.data, pattern.size, ZB_PATTERN))
        return ZB_BAD_TOPIC;
    if (queue.size && zb_check_name(queue.data, queue.size, ZB_QUEUE))
        return ZB_BAD_TOPIC;
    return build(msg, ZB_SUBSCRIBE, channel, frames, 4);
}

int zb_encode_unsubscribe(zb_msg *msg, const uint8_t channel[16], zb_bytes ref, zb_bytes sids)
{
    zb_bytes frames[2] = {ref, sids};
    msg->count = 0;
    if (ref.size > ZB_MAX_REF || sids.size == 0 || sids.size % ZB_SID_SIZE)
        return ZB_BAD_FRAMES;
    return build(msg, ZB_UNSUBSCRIBE, channel, frames, 2);
}

int zb_encode_publish(zb_msg *msg, const uint8_t channel[16], zb_bytes ref, zb_bytes topic,
                      zb_bytes body)
{
    zb_bytes frames[3] = {ref, topic, body};
    msg->count = 0;
    if (ref.size > ZB_MAX_REF)
        return ZB_BAD_FRAMES;
    if (zb_check_name(topic.data, topic.size, ZB_TOPIC))
        return ZB_BAD_TOPIC;
    return build(msg, ZB_PUBLISH, channel, frames, 3);
}

int zb_encode_ack(zb_msg *msg, const uint8_t channel[16], zb_bytes token, zb_bytes body)
{
    zb_bytes frames[2] = {token, body};
    msg->count = 0;
    if (token.size < 1 || token.size > ZB_MAX_REF)
        return ZB_BAD_FRAMES;
    return build(msg, ZB_ACK, channel, frames, 2);
}

int zb_encode_disconnect(zb_msg *msg, const uint8_t channel[16], zb_bytes ref)
{
    msg->count = 0;
    if (ref.size > ZB_MAX_REF)
        return ZB_BAD_FRAMES;
    return build(msg, ZB_DISCONNECT, channel, &ref, 1);
}

int zb_encode_request(zb_msg *msg, const uint8_t channel[16], zb_bytes ref, zb_bytes topic,
                      zb_bytes body)
{
    zb_bytes frames[3] = {ref, topic, body};
    msg->count = 0;
    if (ref.size < 1 || ref.size > ZB_MAX_REQUEST_REF)
        return ZB_BAD_FRAMES;
    if (zb_check_name(topic.data, topic.size, ZB_TOPIC))
        return ZB_BAD_TOPIC;
    return build(msg, ZB_REQUEST, channel, frames, 3);
}

int zb_encode_reply(zb_msg *msg, const uint8_t channel[16], zb_bytes token, zb_bytes body)
{
    zb_bytes frames[2] = {token, body};
    msg->count = 0;
    if (token.size < ZB_MIN_REPLY_TOKEN || token.size > ZB_MAX_REF)
        return ZB_BAD_FRAMES;
    return build(msg, ZB_REPLY, channel, frames, 2);
}

int zb_encode_batch(zb_msg *msg, const uint8_t channel[16], const zb_msg *msgs, size_t n)
{
    size_t i, j, size = 0;
    uint8_t *entries, *p;
    int rc;
    msg->count = 0;
    if (n == 0)
        return ZB_BAD_FRAMES;
    for (i = 0; i < n; i++) {
        const zb_msg *m = &msgs[i];
        int frames = 0;
        if (m->count >= 1 && m->frames[0].size == 4)
            frames = zb_entry_frames(m->frames[0].data[3], ZB_CLIENT_ENTRIES);
        if (frames == 0 || m->count != (size_t)frames + 2 || m->frames[1].size != ZB_CHANNEL_SIZE ||
            memcmp(m->frames[1].data, channel, ZB_CHANNEL_SIZE) != 0)
            return ZB_BAD_FRAMES;
        size += 1;
        for (j = 2; j < m->count; j++) {
            if ((uint64_t)m->frames[j].size > UINT32_MAX)
                return ZB_BAD_FRAMES;
            size += 4 + m->frames[j].size;
        }
    }
    p = entries = malloc(size);
    if (!entries)
        return ZB_ENOMEM;
    for (i = 0; i < n; i++) {
        *p++ = msgs[i].frames[0].data[3];
        for (j = 2; j < msgs[i].count; j++) {
            put_u32(p, (uint32_t)msgs[i].frames[j].size);
            if (msgs[i].frames[j].size)
                memcpy(p + 4, msgs[i].frames[j].data, msgs[i].frames[j].size);
            p += 4 + msgs[i].frames[j].size;
        }
    }
    {
        zb_bytes frame = bytes_of(entries, size);
        rc = build(msg, ZB_BATCH, channel, &frame, 1);
    }
    free(entries);
    return rc;
}

/* ------------------------------------------------------------------ */
/* bodies: encoding                                                     */
/* ------------------------------------------------------------------ */

/* Move a packed sbuffer into out (msgpack_sbuffer uses malloc). */
static int sbuf_take(msgpack_sbuffer *sb, int rc, zb_buf *out)
{
    if (rc) {
        msgpack_sbuffer_destroy(sb);
        out->data = NULL;
        out->size = 0;
        return ZB_ENOMEM;
    }
    out->size = sb->size;
    out->data = (uint8_t *)msgpack_sbuffer_release(sb);
    msgpack_sbuffer_destroy(sb);
    return 0;
}

static int pack_text(msgpack_packer *pk, zb_bytes text)
{
    return msgpack_pack_str(pk, text.size) || msgpack_pack_str_body(pk, text.data, text.size);
}

static int pack_binary(msgpack_packer *pk, zb_bytes data)
{
    return msgpack_pack_bin(pk, data.size) || msgpack_pack_bin_body(pk, data.data, data.size);
}

/* The Timestamp extension, in its shortest form. */
static int pack_timestamp(msgpack_packer *pk, zb_time ts)
{
    uint8_t b[12];
    if (ts.nsec == 0 && ts.sec >= 0 && ts.sec <= 0xFFFFFFFFLL) {
        put_u32(b, (uint32_t)ts.sec);
        return msgpack_pack_ext_with_body(pk, b, 4, -1);
    }
    if (ts.sec >= 0 && ts.sec < (1LL << 34)) {
        put_u64(b, ((uint64_t)ts.nsec << 34) | (uint64_t)ts.sec);
        return msgpack_pack_ext_with_body(pk, b, 8, -1);
    }
    put_u32(b, ts.nsec);
    put_u64(b + 4, (uint64_t)ts.sec);
    return msgpack_pack_ext_with_body(pk, b, 12, -1);
}

int zb_encode_hello_body(zb_buf *out, const char *client_name)
{
    return zb_encode_hello_body_ex(out, client_name, 0);
}

int zb_encode_hello_body_ex(zb_buf *out, const char *client_name, int batch_commands)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int rc;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rc = msgpack_pack_map(&pk, (client_name ? 1 : 0) + (batch_commands ? 1 : 0));
    if (rc == 0 && client_name)
        rc = pack_text(&pk, bytes_str("client")) || pack_text(&pk, bytes_str(client_name));
    if (rc == 0 && batch_commands)
        rc = pack_text(&pk, bytes_str("batch_commands")) || msgpack_pack_true(&pk);
    return sbuf_take(&sb, rc, out);
}

static int pack_message(msgpack_packer *pk, size_t n_elements, const uint8_t id[16], zb_time ts,
                        const zb_header *headers, size_t n_headers, zb_bytes payload)
{
    size_t i;
    if (msgpack_pack_array(pk, n_elements) || pack_binary(pk, bytes_of(id, 16)) ||
        pack_timestamp(pk, ts) || msgpack_pack_map(pk, n_headers))
        return -1;
    for (i = 0; i < n_headers; i++)
        if (pack_text(pk, bytes_of(headers[i].key, headers[i].key_len)) ||
            pack_text(pk, bytes_of(headers[i].value, headers[i].value_len)))
            return -1;
    return pack_binary(pk, payload);
}

static int check_message_fields(zb_time ts, const zb_header *headers, size_t n_headers)
{
    size_t i;
    if (ts.nsec > 999999999u || ts.sec < MIN_SECONDS || ts.sec > MAX_SECONDS)
        return ZB_BAD_BODY;
    for (i = 0; i < n_headers; i++)
        if (!zb_utf8_valid((const uint8_t *)headers[i].key, headers[i].key_len) ||
            !zb_utf8_valid((const uint8_t *)headers[i].value, headers[i].value_len))
            return ZB_BAD_BODY;
    return 0;
}

int zb_encode_message_body(zb_buf *out, const uint8_t id[16], zb_time ts, const zb_header *headers,
                           size_t n_headers, zb_bytes payload)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int rc = check_message_fields(ts, headers, n_headers);
    if (rc)
        return rc;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rc = pack_message(&pk, 4, id, ts, headers, n_headers, payload);
    return sbuf_take(&sb, rc, out);
}

int zb_encode_reply_body(zb_buf *out, const uint8_t id[16], zb_time ts, const zb_header *headers,
                         size_t n_headers, zb_bytes payload, const zb_bytes *error)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int rc = check_message_fields(ts, headers, n_headers);
    if (rc)
        return rc;
    if (error && !zb_utf8_valid(error->data, error->size))
        return ZB_BAD_BODY;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rc = pack_message(&pk, 5, id, ts, headers, n_headers, payload) ||
         (error ? pack_text(&pk, *error) : msgpack_pack_nil(&pk));
    return sbuf_take(&sb, rc, out);
}

int zb_encode_ack_body(zb_buf *out, uint64_t delivered, uint64_t dropped, const zb_bytes *errors,
                       size_t n_errors)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t i;
    int rc;
    for (i = 0; i < n_errors; i++)
        if (!zb_utf8_valid(errors[i].data, errors[i].size))
            return ZB_BAD_BODY;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rc = msgpack_pack_array(&pk, 3) || msgpack_pack_uint64(&pk, delivered) ||
         msgpack_pack_uint64(&pk, dropped) || msgpack_pack_array(&pk, n_errors);
    for (i = 0; !rc && i < n_errors; i++)
        rc = pack_text(&pk, errors[i]);
    return sbuf_take(&sb, rc, out);
}

/* ------------------------------------------------------------------ */
/* bodies: decoding                                                     */
/* ------------------------------------------------------------------ */

/* Unpack exactly one msgpack object filling the whole body. Strings of
 * the result point into body. 0 or 422. */
static int unpack_whole(msgpack_unpacked *unp, zb_bytes body)
{
    size_t off = 0;
    msgpack_unpack_return ret;
    msgpack_unpacked_init(unp);
    if (body.size == 0)
        return ZB_BAD_BODY;
    ret = msgpack_unpack_next(unp, (const char *)body.data, body.size, &off);
    if (ret != MSGPACK_UNPACK_SUCCESS || off != body.size) {
        msgpack_unpacked_destroy(unp);
        msgpack_unpacked_init(unp);
        return ZB_BAD_BODY;
    }
    return 0;
}

static int is_text(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_STR &&
           zb_utf8_valid((const uint8_t *)o->via.str.ptr, o->via.str.size);
}

/* Every str anywhere in o is valid UTF-8 (the general rule for text). */
static int all_text_valid(const msgpack_object *o)
{
    uint32_t i;
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        return is_text(o);
    case MSGPACK_OBJECT_ARRAY:
        for (i = 0; i < o->via.array.size; i++)
            if (!all_text_valid(&o->via.array.ptr[i]))
                return 0;
        return 1;
    case MSGPACK_OBJECT_MAP:
        for (i = 0; i < o->via.map.size; i++)
            if (!all_text_valid(&o->via.map.ptr[i].key) || !all_text_valid(&o->via.map.ptr[i].val))
                return 0;
        return 1;
    default:
        return 1;
    }
}

/* A map whose keys are all str, with valid text throughout. */
static int is_str_keyed_map(const msgpack_object *o)
{
    uint32_t i;
    if (o->type != MSGPACK_OBJECT_MAP)
        return 0;
    for (i = 0; i < o->via.map.size; i++)
        if (o->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
            return 0;
    return all_text_valid(o);
}

/* The value of key in a str-keyed map, or NULL. */
static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    size_t len = strlen(key);
    uint32_t i;
    for (i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.via.str.size == len && memcmp(kv->key.via.str.ptr, key, len) == 0)
            return &kv->val;
    }
    return NULL;
}

/* HELLO and WELCOME: "heartbeat", when present, is a non-negative int. */
static int heartbeat_valid(const msgpack_object *map)
{
    const msgpack_object *hb = map_get(map, "heartbeat");
    return !hb || hb->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

/* HELLO and WELCOME: "batch" and "batch_commands", when present, are booleans. */
static int batch_valid(const msgpack_object *map)
{
    const msgpack_object *batch = map_get(map, "batch");
    const msgpack_object *commands = map_get(map, "batch_commands");
    return (!batch || batch->type == MSGPACK_OBJECT_BOOLEAN) &&
           (!commands || commands->type == MSGPACK_OBJECT_BOOLEAN);
}

static int decode_timestamp(const msgpack_object *o, zb_time *ts)
{
    const uint8_t *p = (const uint8_t *)o->via.ext.ptr;
    if (o->type != MSGPACK_OBJECT_EXT || o->via.ext.type != -1)
        return -1;
    switch (o->via.ext.size) {
    case 4:
        ts->sec = get_u32(p);
        ts->nsec = 0;
        break;
    case 8: {
        uint64_t v = get_u64(p);
        ts->nsec = (uint32_t)(v >> 34);
        ts->sec = (int64_t)(v & ((1ULL << 34) - 1));
        break;
    }
    case 12:
        ts->nsec = get_u32(p);
        ts->sec = (int64_t)get_u64(p + 4);
        break;
    default:
        return -1;
    }
    if (ts->nsec > 999999999u || ts->sec < MIN_SECONDS || ts->sec > MAX_SECONDS)
        return -1;
    return 0;
}

typedef struct {
    msgpack_unpacked unp;
} message_storage;

void zb_message_free(zb_message *msg)
{
    message_storage *st = msg->_storage;
    if (st) {
        msgpack_unpacked_destroy(&st->unp);
        free(st);
    }
    free(msg->headers);
    memset(msg, 0, sizeof *msg);
}

int zb_decode_message(zb_message *out, zb_bytes body, int is_reply)
{
    message_storage *st;
    const msgpack_object *a;
    uint32_t i;
    memset(out, 0, sizeof *out);
    st = calloc(1, sizeof *st);
    if (!st)
        return ZB_ENOMEM;
    out->_storage = st;
    if (unpack_whole(&st->unp, body))
        goto bad;
    if (st->unp.data.type != MSGPACK_OBJECT_ARRAY || st->unp.data.via.array.size < 4)
        goto bad;
    a = st->unp.data.via.array.ptr;
    /* 0: id, bin of 16 octets */
    if (a[0].type != MSGPACK_OBJECT_BIN || a[0].via.bin.size != 16)
        goto bad;
    memcpy(out->id, a[0].via.bin.ptr, 16);
    /* 1: timestamp */
    if (decode_timestamp(&a[1], &out->timestamp))
        goto bad;
    /* 2: headers, map of str to str */
    if (a[2].type != MSGPACK_OBJECT_MAP)
        goto bad;
    out->n_headers = a[2].via.map.size;
    out->headers = calloc(out->n_headers ? out->n_headers : 1, sizeof *out->headers);
    if (!out->headers) {
        zb_message_free(out);
        return ZB_ENOMEM;
    }
    for (i = 0; i < a[2].via.map.size; i++) {
        const msgpack_object_kv *kv = &a[2].via.map.ptr[i];
        if (!is_text(&kv->key) || !is_text(&kv->val))
            goto bad;
        out->headers[i].key = kv->key.via.str.ptr;
        out->headers[i].key_len = kv->key.via.str.size;
        out->headers[i].value = kv->val.via.str.ptr;
        out->headers[i].value_len = kv->val.via.str.size;
    }
    /* 3: payload, bin */
    if (a[3].type != MSGPACK_OBJECT_BIN)
        goto bad;
    out->payload = bytes_of(a[3].via.bin.ptr, a[3].via.bin.size);
    /* 4 (replies): error, nil or str */
    if (is_reply && st->unp.data.via.array.size >= 5) {
        if (a[4].type == MSGPACK_OBJECT_STR) {
            if (!is_text(&a[4]))
                goto bad;
            out->has_error = 1;
            out->error = bytes_of(a[4].via.str.ptr, a[4].via.str.size);
        } else if (a[4].type != MSGPACK_OBJECT_NIL) {
            goto bad;
        }
    }
    return 0;
bad:
    zb_message_free(out);
    return ZB_BAD_BODY;
}

void zb_ack_free(zb_ack *ack)
{
    message_storage *st = ack->_storage;
    if (st) {
        msgpack_unpacked_destroy(&st->unp);
        free(st);
    }
    free(ack->errors);
    memset(ack, 0, sizeof *ack);
}

int zb_decode_ack(zb_ack *out, zb_bytes body)
{
    message_storage *st;
    const msgpack_object *a;
    uint32_t i;
    memset(out, 0, sizeof *out);
    st = calloc(1, sizeof *st);
    if (!st)
        return ZB_ENOMEM;
    out->_storage = st;
    if (unpack_whole(&st->unp, body))
        goto bad;
    if (st->unp.data.type != MSGPACK_OBJECT_ARRAY || st->unp.data.via.array.size < 3)
        goto bad;
    a = st->unp.data.via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        a[2].type != MSGPACK_OBJECT_ARRAY)
        goto bad;
    out->delivered = a[0].via.u64;
    out->dropped = a[1].via.u64;
    out->n_errors = a[2].via.array.size;
    out->errors = calloc(out->n_errors ? out->n_errors : 1, sizeof *out->errors);
    if (!out->errors) {
        zb_ack_free(out);
        return ZB_ENOMEM;
    }
    for (i = 0; i < a[2].via.array.size; i++) {
        const msgpack_object *e = &a[2].via.array.ptr[i];
        if (!is_text(e))
            goto bad;
        out->errors[i] = bytes_of(e->via.str.ptr, e->via.str.size);
    }
    return 0;
bad:
    zb_ack_free(out);
    return ZB_BAD_BODY;
}

int zb_check_hello_body(zb_bytes body)
{
    msgpack_unpacked unp;
    int rc = unpack_whole(&unp, body);
    if (rc == 0 && (!is_str_keyed_map(&unp.data) || !heartbeat_valid(&unp.data) ||
                    !batch_valid(&unp.data)))
        rc = ZB_BAD_BODY;
    msgpack_unpacked_destroy(&unp);
    return rc;
}

int zb_check_stats_body(zb_bytes body)
{
    msgpack_unpacked unp;
    int rc = unpack_whole(&unp, body);
    if (rc == 0 && !is_str_keyed_map(&unp.data))
        rc = ZB_BAD_BODY;
    msgpack_unpacked_destroy(&unp);
    return rc;
}

int zb_decode_welcome_body(zb_bytes body, uint64_t *max_message_size)
{
    int batch_commands;
    return zb_decode_welcome_body_ex(body, max_message_size, &batch_commands);
}

int zb_decode_welcome_body_ex(zb_bytes body, uint64_t *max_message_size, int *batch_commands)
{
    msgpack_unpacked unp;
    const msgpack_object *max, *commands;
    int rc = unpack_whole(&unp, body);
    *max_message_size = 0;
    *batch_commands = 0;
    if (rc == 0 && (!is_str_keyed_map(&unp.data) || !heartbeat_valid(&unp.data) ||
                    !batch_valid(&unp.data)))
        rc = ZB_BAD_BODY;
    if (rc == 0) {
        max = map_get(&unp.data, "max_message_size");
        if (!max || max->type != MSGPACK_OBJECT_POSITIVE_INTEGER || max->via.u64 == 0)
            rc = ZB_BAD_BODY;
        else
            *max_message_size = max->via.u64;
    }
    if (rc == 0) {
        /* a boolean when present (batch_valid); absent means false */
        commands = map_get(&unp.data, "batch_commands");
        *batch_commands = commands && commands->via.boolean;
    }
    msgpack_unpacked_destroy(&unp);
    return rc;
}

/* ------------------------------------------------------------------ */
/* broker messages                                                      */
/* ------------------------------------------------------------------ */

static int broker_frame_count(int command)
{
    switch (command) {
    case ZB_BROKER_HEARTBEAT: case ZB_BYE: return 2;
    case ZB_WELCOME: case ZB_OK: case ZB_DELIVER_BATCH: case ZB_BROKER_BATCH: return 3;
    case ZB_ROUTED: case ZB_ACKED: case ZB_ANSWER: case ZB_STATS_REPLY: case ZB_DROPPED: return 4;
    case ZB_DELIVER: case ZB_ASK: case ZB_ERROR: return 6;
    default: return 0;
    }
}

/* Take the next len octets of b at *pos into *out: 0, or -1 past the end. */
static int take(zb_bytes b, size_t *pos, size_t len, zb_bytes *out)
{
    if (*pos > b.size || len > b.size - *pos)
        return -1;
    *out = bytes_of(b.data + *pos, len);
    *pos += len;
    return 0;
}

int zb_next_deliver_entry(zb_bytes entries, size_t *pos, zb_deliver_entry *out)
{
    zb_bytes len;
    memset(out, 0, sizeof *out);
    if (take(entries, pos, 2, &len) || take(entries, pos, get_u16(len.data), &out->sids) ||
        take(entries, pos, 2, &len) || take(entries, pos, get_u16(len.data), &out->topic) ||
        take(entries, pos, 4, &len) || take(entries, pos, get_u32(len.data), &out->body))
        return ZB_BAD_FRAMES;
    if (out->topic.size == 0 || out->sids.size == 0 || out->sids.size % ZB_SID_SIZE)
        return ZB_BAD_FRAMES;
    return 0;
}

/* The entries frame of a DELIVER_BATCH: one or more deliver-entries and
 * nothing else (400), each topic valid (406). Like the reference parser, it
 * checks the framing of every entry before any topic. */
static int check_deliver_entries(zb_bytes entries)
{
    zb_deliver_entry e;
    size_t pos = 0;
    int topic_rc = 0;
    if (entries.size == 0)
        return ZB_BAD_FRAMES;
    while (pos < entries.size) {
        if (zb_next_deliver_entry(entries, &pos, &e))
            return ZB_BAD_FRAMES;
        if (topic_rc == 0)
            topic_rc = zb_check_name(e.topic.data, e.topic.size, ZB_TOPIC);
    }
    return topic_rc;
}

int zb_entry_frames(int command, int side)
{
    if (side == ZB_CLIENT_ENTRIES) {
        switch (command) {
        case ZB_PUBLISH: case ZB_REQUEST: return 3;
        case ZB_ACK: case ZB_REPLY: return 2;
        default: return 0;
        }
    }
    switch (command) {
    case ZB_DELIVER: case ZB_ASK: return 4;
    case ZB_ROUTED: case ZB_ACKED: case ZB_ANSWER: return 2;
    default: return 0;
    }
}

int zb_next_command_entry(zb_bytes entries, size_t *pos, int side, zb_command_entry *out)
{
    zb_bytes command, len;
    size_t i;
    memset(out, 0, sizeof *out);
    if (take(entries, pos, 1, &command))
        return ZB_BAD_FRAMES;
    out->command = command.data[0];
    out->count = (size_t)zb_entry_frames(out->command, side);
    if (out->count == 0)
        return ZB_BAD_FRAMES; /* a command this side's batch may not hold */
    for (i = 0; i < out->count; i++)
        if (take(entries, pos, 4, &len) || take(entries, pos, get_u32(len.data), &out->frames[i]))
            return ZB_BAD_FRAMES;
    return 0;
}

int zb_check_command_entries(zb_bytes entries, int side)
{
    zb_command_entry e;
    size_t pos = 0;
    if (entries.size == 0)
        return ZB_BAD_FRAMES;
    while (pos < entries.size)
        if (zb_next_command_entry(entries, &pos, side, &e))
            return ZB_BAD_FRAMES;
    return 0;
}

int zb_parse_broker(zb_broker_msg *out, const zb_bytes *f, size_t n)
{
    int command;
    memset(out, 0, sizeof *out);
    out->retry_after = -1;
    if (n == 0)
        return ZB_BAD_FRAMES;
    if (f[0].size != 4 || f[0].data[0] != SIGNATURE[0] || f[0].data[1] != SIGNATURE[1] ||
        f[0].data[2] != VERSION)
        return ZB_VERSION_NOT_SUPPORTED;
    command = f[0].data[3];
    if (broker_frame_count(command) == 0)
        return ZB_UNKNOWN_COMMAND;
    if ((size_t)broker_frame_count(command) != n)
        return ZB_BAD_FRAMES;
    out->command = command;
    out->channel = f[1];
    if (f[1].size != ZB_CHANNEL_SIZE &&
        !((command == ZB_ERROR || command == ZB_STATS_REPLY) && f[1].size == 0))
        return ZB_BAD_FRAMES;
    switch (command) {
    case ZB_BROKER_HEARTBEAT:
    case ZB_BYE:
        return 0;
    case ZB_STATS_REPLY:
        out->ref = f[2];
        out->body = f[3];
        return f[2].size > ZB_MAX_REF ? ZB_BAD_FRAMES : zb_check_stats_body(f[3]);
    case ZB_DROPPED:
        /* no pairs is fine: a DROPPED may tell only of throttled publishes */
        out->counts = f[2];
        if (f[2].size % 8 || f[3].size != 4)
            return ZB_BAD_FRAMES;
        out->throttled = get_u32(f[3].data);
        return 0;
    case ZB_WELCOME:
        out->body = f[2];
        return zb_decode_welcome_body_ex(f[2], &out->max_message_size, &out->batch_commands);
    case ZB_OK:
        out->ref = f[2];
        return f[2].size > ZB_MAX_REF ? ZB_BAD_FRAMES : 0;
    case ZB_DELIVER:
    case ZB_ASK:
        out->token = f[2];
        out->topic = f[3];
        out->body = f[4];
        out->sids = f[5];
        if (f[2].size > ZB_MAX_REF || (command == ZB_ASK && f[2].size < ZB_MIN_REPLY_TOKEN))
            return ZB_BAD_FRAMES;
        if (f[5].size == 0 || f[5].size % ZB_SID_SIZE)
            return ZB_BAD_FRAMES;
        return zb_check_name(f[3].data, f[3].size, ZB_TOPIC);
    case ZB_DELIVER_BATCH:
        out->entries = f[2];
        return check_deliver_entries(f[2]);
    case ZB_BROKER_BATCH:
        /* the envelope only: each entry is checked as the message alone */
        out->entries = f[2];
        return zb_check_command_entries(f[2], ZB_BROKER_ENTRIES);
    case ZB_ROUTED:
        out->ref = f[2];
        if (f[2].size < 1 || f[2].size > ZB_MAX_REF || f[3].size != 4)
            return ZB_BAD_FRAMES;
        out->count = get_u32(f[3].data);
        return 0;
    case ZB_ACKED:
        out->ref = f[2];
        out->body = f[3];
        return f[2].size < 1 || f[2].size > ZB_MAX_REF ? ZB_BAD_FRAMES : 0;
    case ZB_ANSWER:
        out->ref = f[2];
        out->body = f[3];
        return f[2].size < 1 || f[2].size > ZB_MAX_REQUEST_REF ? ZB_BAD_FRAMES : 0;
    default: /* ZB_ERROR */
        out->ref = f[2];
        out->text = f[4];
        if (f[2].size > ZB_MAX_REF || f[3].size != 2 || !zb_utf8_valid(f[4].data, f[4].size) ||
            (f[5].size != 0 && f[5].size != 4))
            return ZB_BAD_FRAMES;
        out->code = get_u16(f[3].data);
        if (f[5].size == 4)
            out->retry_after = get_u32(f[5].data);
        return 0;
    }
}

/* ------------------------------------------------------------------ */
/* helpers                                                              */
/* ------------------------------------------------------------------ */

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int zb_hex_decode(const char *hex, zb_buf *out)
{
    size_t len = strlen(hex), i;
    out->data = NULL;
    out->size = 0;
    if (len % 2)
        return -1;
    out->data = malloc(len / 2 + 1);
    if (!out->data)
        return -1;
    for (i = 0; i < len / 2; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            zb_buf_free(out);
            return -1;
        }
        out->data[i] = (uint8_t)(hi << 4 | lo);
    }
    out->size = len / 2;
    return 0;
}

int zb_parse_channel(const char *text, uint8_t out[16])
{
    size_t n = 0;
    const char *p;
    for (p = text; *p; p++) {
        int hi, lo;
        if (*p == '-')
            continue;
        if (n == 16 || !p[1])
            return -1;
        hi = hex_value(p[0]);
        lo = hex_value(p[1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[n++] = (uint8_t)(hi << 4 | lo);
        p++;
    }
    return n == 16 ? 0 : -1;
}

/* 1 if text is exactly 40 characters of Z85 that decode to a 32-octet key. */
static int z85_key_valid(const char *text)
{
    uint8_t key[32];
    return strlen(text) == ZB_KEY_TEXT - 1 && zmq_z85_decode(key, text) != NULL;
}

/* Where a ZPL line "NAME = VALUE" (VALUE quoted or bare, the line indented or
 * not) gives name a value, copy that value to out: 1 if it is a Z85 key, -1
 * if it is something else, 0 if no line names it. */
static int zpl_key(const char *text, const char *name, char out[ZB_KEY_TEXT])
{
    size_t len = strlen(name);
    const char *line = text;
    while (line && *line) {
        const char *p = line + strspn(line, " \t");
        const char *next = strchr(line, '\n');
        if (strncmp(p, name, len) == 0 && p[len + strspn(p + len, " \t")] == '=') {
            const char *end;
            char quote = 0;
            p += len + strspn(p + len, " \t") + 1;
            p += strspn(p, " \t");
            if (*p == '"' || *p == '\'')
                quote = *p++;
            end = p;
            while (*end && *end != '\n' && *end != '\r' &&
                   (quote ? *end != quote : !strchr(" \t#", *end)))
                end++;
            if (end - p != ZB_KEY_TEXT - 1)
                return -1;
            memcpy(out, p, ZB_KEY_TEXT - 1);
            out[ZB_KEY_TEXT - 1] = 0;
            return z85_key_valid(out) ? 1 : -1;
        }
        line = next ? next + 1 : NULL;
    }
    return 0;
}

/* The text of a (small) key file, NUL-terminated and malloc'd; NULL with err. */
static char *read_key_file(const char *path, char *err, size_t err_size)
{
    enum { LIMIT = 64 * 1024 };
    FILE *fp = fopen(path, "rb");
    char *text;
    size_t n;
    if (!fp) {
        snprintf(err, err_size, "no key file at %s (%s), and not 40 characters of Z85", path,
                 strerror(errno));
        return NULL;
    }
    text = malloc(LIMIT + 1);
    if (!text) {
        fclose(fp);
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    n = fread(text, 1, LIMIT, fp);
    text[n] = 0;
    fclose(fp);
    return text;
}

int zb_load_public_key(const char *spec, char public_key[ZB_KEY_TEXT], char *err, size_t err_size)
{
    char *text;
    int found;
    if (strlen(spec) == ZB_KEY_TEXT - 1) {
        if (!z85_key_valid(spec)) {
            snprintf(err, err_size, "%s is not valid Z85 text", spec);
            return -1;
        }
        memcpy(public_key, spec, ZB_KEY_TEXT);
        return 0;
    }
    if (!(text = read_key_file(spec, err, err_size)))
        return -1;
    found = zpl_key(text, "public-key", public_key);
    free(text);
    if (found != 1) {
        snprintf(err, err_size, "%s %s", spec,
                 found ? "has a public-key that is not 40 characters of Z85"
                       : "holds no public-key (not a zmq.auth certificate)");
        return -1;
    }
    return 0;
}

/* public_key from secret_key; -1 with err if libzmq cannot (no CURVE). */
static int derive_public(const char *secret_key, char public_key[ZB_KEY_TEXT], char *err,
                         size_t err_size)
{
    if (zmq_curve_public(public_key, secret_key) != 0) {
        snprintf(err, err_size, "cannot derive the public key: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int zb_load_keypair(const char *spec, char public_key[ZB_KEY_TEXT], char secret_key[ZB_KEY_TEXT],
                    char *err, size_t err_size)
{
    char derived[ZB_KEY_TEXT], *text;
    int has_public, has_secret;
    size_t len = strlen(spec);
    if (len == ZB_KEY_TEXT - 1) {
        if (!z85_key_valid(spec)) {
            snprintf(err, err_size, "the secret key is not valid Z85 text");
            return -1;
        }
        memcpy(secret_key, spec, ZB_KEY_TEXT);
        return derive_public(secret_key, public_key, err, err_size);
    }
    if (len == 2 * (ZB_KEY_TEXT - 1) + 1 && spec[ZB_KEY_TEXT - 1] == ':') {
        memcpy(public_key, spec, ZB_KEY_TEXT - 1);
        public_key[ZB_KEY_TEXT - 1] = 0;
        memcpy(secret_key, spec + ZB_KEY_TEXT, ZB_KEY_TEXT);
        if (!z85_key_valid(public_key) || !z85_key_valid(secret_key)) {
            snprintf(err, err_size, "PUBLIC:SECRET must be two keys of 40 characters of Z85");
            return -1;
        }
        has_public = has_secret = 1;
    } else {
        if (!(text = read_key_file(spec, err, err_size)))
            return -1;
        has_public = zpl_key(text, "public-key", public_key);
        has_secret = zpl_key(text, "secret-key", secret_key);
        free(text);
        if (has_secret != 1 || has_public < 0) {
            snprintf(err, err_size, "%s %s", spec,
                     has_secret == 0 ? "holds no secret-key (use NAME.key_secret)"
                                     : "has a key that is not 40 characters of Z85");
            return -1;
        }
    }
    if (derive_public(secret_key, derived, err, err_size))
        return -1;
    /* a pair that does not match would fail the handshake with no clue why */
    if (has_public == 1 && strcmp(derived, public_key) != 0) {
        snprintf(err, err_size, "the public key is not the secret key's");
        return -1;
    }
    memcpy(public_key, derived, ZB_KEY_TEXT);
    return 0;
}

/* ------------------------------------------------------------------ */
/* the client                                                           */
/* ------------------------------------------------------------------ */

/* The frames of one received message. */
typedef struct frames {
    size_t count;
    zmq_msg_t *parts;
    zb_bytes *views;
    struct frames *next; /* queue of pending DELIVERs, or of BROKER_BATCH entries */
} frames;

static void frames_free(frames *f)
{
    size_t i;
    if (!f)
        return;
    for (i = 0; i < f->count; i++)
        zmq_msg_close(&f->parts[i]);
    free(f->parts);
    free(f->views);
    free(f);
}

struct zb_client {
    void *ctx;
    void *sock;
    uint8_t channel[16];
    int joined;
    uint64_t max_message_size;
    uint64_t next_ref;
    uint32_t next_sid;
    uint8_t *sids; /* open sids, 4 octets each */
    size_t n_sids;
    frames *deliveries_head, *deliveries_tail;
    frames *inbox_head, *inbox_tail; /* entries of a BROKER_BATCH, read before the socket */
    int ask_batch_commands; /* put "batch_commands": true in the HELLO */
    int batching;           /* the WELCOME offered batch_commands: hold ACKs and PUBLISHes */
    zb_msg *held;           /* held for a BATCH, in order */
    size_t n_held, cap_held, held_bytes; /* held_bytes: their size as entries */
    zb_batch_stats stats;
    zb_stray_error *strays;
    size_t n_strays;
    char last_error[512];
    int last_code;
    int64_t last_retry_after;
    uint64_t throttled;
    char *endpoint;  /* set once connected */
    int curve;       /* zb_client_set_curve was called */
    void *handshake; /* PAIR reading the DEALER's failed-handshake events */
};

static int fail(zb_client *c, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
    return rc;
}

zb_client *zb_client_create(void)
{
    int linger = 2000;
    zb_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->next_ref = 1;
    c->next_sid = 1;
    c->last_retry_after = -1;
    c->ctx = zmq_ctx_new();
    if (!c->ctx)
        goto fail;
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock)
        goto fail;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    return c;
fail:
    zb_client_destroy(c);
    return NULL;
}

int zb_client_set_curve(zb_client *c, const char *server_key, const char *public_key,
                        const char *secret_key)
{
    const size_t len = ZB_KEY_TEXT - 1;
    if (c->endpoint)
        return fail(c, ZB_ESTATE, "CURVE keys must be set before connecting");
    if (!zmq_has("curve"))
        return fail(c, ZB_EZMQ, "this libzmq was built without CURVE");
    /* the server key makes the socket a CURVE client; libzmq takes Z85 as 40 octets */
    if (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, server_key, strnlen(server_key, len + 1)) ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, public_key, strnlen(public_key, len + 1)) ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, secret_key, strnlen(secret_key, len + 1)))
        return fail(c, ZB_EZMQ, "CURVE key refused by libzmq (want 40 characters of Z85): %s",
                    zmq_strerror(errno));
    c->curve = 1;
    return 0;
}

int zb_client_connect(zb_client *c, const char *endpoint)
{
    static const char watch[] = "inproc://zbclient-handshake"; /* the context is ours alone */
    const int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                       ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
    int linger = 0;
    if (c->endpoint)
        return fail(c, ZB_ESTATE, "already connected");
    /* libzmq retries a refused handshake for ever without a word: its socket
     * monitor is the only place a refusal shows. The reader connects before
     * the DEALER does, or the first events would have nobody to go to. */
    if (zmq_socket_monitor(c->sock, watch, events) != 0 ||
        !(c->handshake = zmq_socket(c->ctx, ZMQ_PAIR)) ||
        zmq_setsockopt(c->handshake, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(c->handshake, watch) != 0)
        return fail(c, ZB_EZMQ, "cannot watch the handshake: %s", zmq_strerror(errno));
    if (zmq_connect(c->sock, endpoint) != 0)
        return fail(c, ZB_EZMQ, "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
    if (!(c->endpoint = strdup(endpoint)))
        return fail(c, ZB_ENOMEM, "out of memory");
    return 0;
}

zb_client *zb_client_new(const char *endpoint)
{
    zb_client *c = zb_client_create();
    if (c && zb_client_connect(c, endpoint) != 0) {
        zb_client_destroy(c);
        return NULL;
    }
    return c;
}

void zb_client_destroy(zb_client *c)
{
    frames *f;
    if (!c)
        return;
    while ((f = c->deliveries_head)) {
        c->deliveries_head = f->next;
        frames_free(f);
    }
    while ((f = c->inbox_head)) {
        c->inbox_head = f->next;
        frames_free(f);
    }
    if (c->n_held && c->sock)
        zb_client_flush(c);
    free(c->held);
    zb_stray_errors_free(c->strays, c->n_strays);
    free(c->sids);
    free(c->endpoint);
    if (c->handshake)
        zmq_close(c->handshake);
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    free(c);
}

const char *zb_client_last_error(const zb_client *c)
{
    return c->last_error;
}

int zb_client_last_code(const zb_client *c)
{
    return c->last_code;
}

int64_t zb_client_last_retry_after(const zb_client *c)
{
    return c->last_retry_after;
}

uint64_t zb_client_throttled(const zb_client *c)
{
    return c->throttled;
}

uint64_t zb_client_max_message_size(const zb_client *c)
{
    return c->max_message_size;
}

const uint8_t *zb_client_channel(const zb_client *c)
{
    return c->channel;
}

static int send_frames(zb_client *c, const zb_bytes *f, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (zmq_send(c->sock, f[i].data, f[i].size, i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            return fail(c, ZB_EZMQ, "zmq_send: %s", zmq_strerror(errno));
    }
    return 0;
}

/* Send msg as it is, and free it. */
static int transmit(zb_client *c, zb_msg *msg)
{
    zb_bytes f[ZB_MAX_FRAMES];
    size_t i;
    int rc;
    for (i = 0; i < msg->count; i++)
        f[i] = bytes_of(msg->frames[i].data, msg->frames[i].size);
    rc = send_frames(c, f, msg->count);
    zb_msg_free(msg);
    return rc;
}

/* The size of msg (a PUBLISH, ACK, REQUEST or REPLY) as a command entry. */
static size_t entry_size(const zb_msg *msg)
{
    size_t i, size = 1;
    for (i = 2; i < msg->count; i++)
        size += 4 + msg->frames[i].size;
    return size;
}

static void drop_held(zb_client *c)
{
    size_t i;
    for (i = 0; i < c->n_held; i++)
        zb_msg_free(&c->held[i]);
    c->n_held = 0;
    c->held_bytes = 0;
}

/* Send the held messages in order: each run of two or more that fits in
 * ZB_BATCH_BYTES of entries as one BATCH, a run of one as the message alone.
 * On failure the rest are dropped. */
static int flush_held(zb_client *c)
{
    size_t i = 0, j, size;
    int rc = 0;
    while (rc == 0 && i < c->n_held) {
        size = entry_size(&c->held[i]);
        for (j = i + 1; j < c->n_held && size + entry_size(&c->held[j]) <= ZB_BATCH_BYTES; j++)
            size += entry_size(&c->held[j]);
        if (j - i == 1) {
            rc = transmit(c, &c->held[i]);
        } else {
            zb_msg batch;
            if ((rc = zb_encode_batch(&batch, c->channel, &c->held[i], j - i)))
                rc = fail(c, rc, "cannot encode BATCH");
            else if ((rc = transmit(c, &batch)) == 0) {
                c->stats.batches_out++;
                c->stats.entries_out += j - i;
            }
        }
        i = j;
    }
    drop_held(c);
    return rc;
}

/* Send msg after what is held, and free it. */
static int send_msg(zb_client *c, zb_msg *msg)
{
    int rc = flush_held(c);
    if (rc) {
        zb_msg_free(msg);
        return rc;
    }
    return transmit(c, msg);
}

/* An ACK or PUBLISH: held for a BATCH when batching, else sent at once. */
static int hold_msg(zb_client *c, zb_msg *msg)
{
    size_t size = entry_size(msg);
    int rc;
    if (!c->batching)
        return send_msg(c, msg);
    /* what is held always fits in one BATCH (or is one larger entry) */
    if (c->n_held && c->held_bytes + size > ZB_BATCH_BYTES && (rc = flush_held(c))) {
        zb_msg_free(msg);
        return rc;
    }
    if (c->n_held == c->cap_held) {
        size_t cap = c->cap_held ? 2 * c->cap_held : 16;
        zb_msg *grown = realloc(c->held, cap * sizeof *grown);
        if (!grown) {
            zb_msg_free(msg);
            return fail(c, ZB_ENOMEM, "out of memory");
        }
        c->held = grown;
        c->cap_held = cap;
    }
    c->held_bytes += size;
    c->held[c->n_held++] = *msg; /* the frames move to the held copy */
    msg->count = 0;
    return 0;
}

int zb_client_send_raw(zb_client *c, const zb_bytes *frames_, size_t n)
{
    int rc = flush_held(c);
    return rc ? rc : send_frames(c, frames_, n);
}

void zb_client_ask_batch_commands(zb_client *c, int on)
{
    c->ask_batch_commands = on != 0;
}

int zb_client_batching(const zb_client *c)
{
    return c->batching;
}

int zb_client_flush(zb_client *c)
{
    return flush_held(c);
}

void zb_client_batch_stats(const zb_client *c, zb_batch_stats *out)
{
    *out = c->stats;
}

/* Words for a failed handshake: the monitor's event and its value. */
static const char *handshake_reason(int curve, unsigned event, uint32_t value, char *buf, size_t n)
{
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && value == 400)
        return "the broker refused this client's key (ZAP 400)";
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        snprintf(buf, n, "the broker's authentication failed (ZAP %u)", (unsigned)value);
        return buf;
    }
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
        value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        return curve ? "the broker does not use CURVE: give no server key or key"
                     : "the broker requires CURVE: give its server key and a client key pair";
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        snprintf(buf, n, "the handshake failed (ZMTP protocol error 0x%x)", (unsigned)value);
        return buf;
    }
    /* the broker drops a handshake it cannot read: all the client sees is a
     * lost connection (errno), so the likely cause is named */
    snprintf(buf, n,
             curve ? "the CURVE handshake failed (%s): is the server key the broker's public key?"
                   : "the handshake failed (%s): does the broker require CURVE (a server key and a "
                     "client key pair)?",
             zmq_strerror((int)value));
    return buf;
}

/* Read one failed-handshake event off the watch and fail with ZB_EAUTH. */
static int handshake_failed(zb_client *c)
{
    zmq_msg_t part;
    uint8_t head[6] = {0};
    uint16_t event;
    uint32_t value;
    char buf[160];
    int more = 1, first = 1, linger = 0;
    size_t more_size = sizeof more;
    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, c->handshake, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            break;
        }
        if (first && zmq_msg_size(&part) >= sizeof head)
            memcpy(head, zmq_msg_data(&part), sizeof head);
        first = 0;
        zmq_msg_close(&part);
        zmq_getsockopt(c->handshake, ZMQ_RCVMORE, &more, &more_size);
    }
    /* the monitor writes the event and its value in host order */
    memcpy(&event, head, sizeof event);
    memcpy(&value, head + 2, sizeof value);
    /* what waits to be sent never will be: closing must not wait on it */
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    /* a session (if any) ended with the connection the broker closed */
    c->joined = 0;
    c->batching = 0;
    drop_held(c);
    c->n_sids = 0;
    return fail(c, ZB_EAUTH, "authentication refused by the broker at %s: %s", c->endpoint,
                handshake_reason(c->curve, event, value, buf, sizeof buf));
}

/* Receive one multipart message, waiting up to timeout_ms (-1: forever). */
static int recv_frames(zb_client *c, frames **out, int timeout_ms)
{
    zmq_pollitem_t items[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->handshake, 0, ZMQ_POLLIN, 0}};
    frames *f;
    size_t cap = 8;
    int more;
    size_t more_size = sizeof more;
    *out = NULL;
    if (zmq_poll(items, c->handshake ? 2 : 1, timeout_ms) < 0)
        return fail(c, ZB_EZMQ, "zmq_poll: %s", zmq_strerror(errno));
    if (items[1].revents & ZMQ_POLLIN)
        return handshake_failed(c);
    if (!(items[0].revents & ZMQ_POLLIN))
        return ZB_ETIMEOUT;
    f = calloc(1, sizeof *f);
    if (!f || !(f->parts = malloc(cap * sizeof *f->parts))) {
        free(f);
        return fail(c, ZB_ENOMEM, "out of memory");
    }
    do {
        if (f->count == cap) {
            zmq_msg_t *p = realloc(f->parts, 2 * cap * sizeof *p);
            if (!p) {
                frames_free(f);
                return fail(c, ZB_ENOMEM, "out of memory");
            }
            f->parts = p;
            cap *= 2;
        }
        zmq_msg_init(&f->parts[f->count]);
        if (zmq_msg_recv(&f->parts[f->count], c->sock, 0) < 0) {
            zmq_msg_close(&f->parts[f->count]);
            frames_free(f);
            return fail(c, ZB_EZMQ, "zmq_msg_recv: %s", zmq_strerror(errno));
        }
        f->count++;
        zmq_getsockopt(c->sock, ZMQ_RCVMORE, &more, &more_size);
    } while (more);
    f->views = malloc(f->count * sizeof *f->views);
    if (!f->views) {
        frames_free(f);
        return fail(c, ZB_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < f->count; i++)
        f->views[i] = bytes_of(zmq_msg_data(&f->parts[i]), zmq_msg_size(&f->parts[i]));
    *out = f;
    return 0;
}

static void print_hex(FILE *fp, zb_bytes b)
{
    size_t i;
    for (i = 0; i < b.size; i++)
        fprintf(fp, "%02x", b.data[i]);
}

static int record_stray(zb_client *c, const zb_broker_msg *m)
{
    zb_stray_error *s, *grown = realloc(c->strays, (c->n_strays + 1) * sizeof *grown);
    if (!grown)
        return ZB_ENOMEM;
    c->strays = grown;
    s = &c->strays[c->n_strays];
    memset(s, 0, sizeof *s);
    s->code = m->code;
    s->retry_after = m->retry_after;
    s->text = malloc(m->text.size + 1);
    if (!s->text || buf_set(&s->channel, m->channel.data, m->channel.size) ||
        buf_set(&s->ref, m->ref.data, m->ref.size)) {
        free(s->text);
        zb_buf_free(&s->channel);
        return ZB_ENOMEM;
    }
    memcpy(s->text, m->text.data, m->text.size);
    s->text[m->text.size] = 0;
    c->n_strays++;
    return 0;
}

zb_stray_error *zb_client_take_stray_errors(zb_client *c, size_t *count)
{
    zb_stray_error *s = c->strays;
    *count = c->n_strays;
    c->strays = NULL;
    c->n_strays = 0;
    return s;
}

void zb_stray_errors_free(zb_stray_error *errors, size_t count)
{
    size_t i;
    for (i = 0; i < count; i++) {
        zb_buf_free(&errors[i].channel);
        zb_buf_free(&errors[i].ref);
        free(errors[i].text);
    }
    free(errors);
}

/* ACK a DELIVER we refuse (bad topic or sids), if its token frame is usable. */
static void refuse_delivery(zb_client *c, const frames *f, int code)
{
    char text[64];
    zb_bytes err;
    zb_buf body;
    zb_msg msg;
    if (f->count != 6 || f->views[2].size < 1 || f->views[2].size > ZB_MAX_REF || !c->joined)
        return;
    snprintf(text, sizeof text, "subscriber refused delivery: code %d", code);
    err = bytes_str(text);
    if (zb_encode_ack_body(&body, 0, 0, &err, 1))
        return;
    if (zb_encode_ack(&msg, c->channel, f->views[2], bytes_of(body.data, body.size)) == 0)
        hold_msg(c, &msg);
    zb_buf_free(&body);
}

/* Put a DELIVER at the end of the queue of pending DELIVERs. */
static void queue_delivery(zb_client *c, frames *f)
{
    if (c->deliveries_tail)
        c->deliveries_tail->next = f;
    else
        c->deliveries_head = f;
    c->deliveries_tail = f;
}

/* A message of n frames (copies of parts). NULL when out of memory. */
static frames *frames_of_parts(const zb_bytes *parts, size_t n)
{
    frames *f = calloc(1, sizeof *f);
    size_t i;
    if (!f)
        return NULL;
    f->parts = malloc(n * sizeof *f->parts);
    f->views = malloc(n * sizeof *f->views);
    if (!f->parts || !f->views) {
        frames_free(f);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (zmq_msg_init_size(&f->parts[i], parts[i].size)) {
            frames_free(f);
            return NULL;
        }
        f->count++;
        if (parts[i].size)
            memcpy(zmq_msg_data(&f->parts[i]), parts[i].data, parts[i].size);
        f->views[i] = bytes_of(zmq_msg_data(&f->parts[i]), parts[i].size);
    }
    return f;
}

/* The DELIVER one entry of a DELIVER_BATCH stands for: its frames, with an
 * empty token (unconfirmed). NULL when out of memory. */
static frames *deliver_of_entry(zb_bytes channel, const zb_deliver_entry *e)
{
    const uint8_t header[4] = {SIGNATURE[0], SIGNATURE[1], VERSION, ZB_DELIVER};
    const zb_bytes parts[6] = {bytes_of(header, 4), channel, bytes_of(NULL, 0), e->topic, e->body,
                               e->sids};
    return frames_of_parts(parts, 6);
}

/* Put each entry of a (checked) BROKER_BATCH in the inbox as the message it
 * stands for: they are then handled in order, each as if it came alone. */
static int inbox_batch(zb_client *c, const zb_broker_msg *m)
{
    zb_command_entry e;
    size_t pos = 0, i;
    while (pos < m->entries.size) {
        uint8_t header[4] = {SIGNATURE[0], SIGNATURE[1], VERSION, 0};
        zb_bytes parts[2 + ZB_MAX_ENTRY_FRAMES];
        frames *f;
        (void)zb_next_command_entry(m->entries, &pos, ZB_BROKER_ENTRIES, &e);
        c->stats.entries_in++;
        header[3] = (uint8_t)e.command;
        parts[0] = bytes_of(header, 4);
        parts[1] = m->channel;
        for (i = 0; i < e.count; i++)
            parts[2 + i] = e.frames[i];
        if (!(f = frames_of_parts(parts, 2 + e.count)))
            return ZB_ENOMEM;
        if (c->inbox_tail)
            c->inbox_tail->next = f;
        else
            c->inbox_head = f;
        c->inbox_tail = f;
    }
    return 0;
}

/* Queue each entry of a (checked) DELIVER_BATCH as the DELIVER it stands for. */
static int queue_batch(zb_client *c, const zb_broker_msg *m)
{
    zb_deliver_entry e;
    size_t pos = 0;
    while (pos < m->entries.size) {
        frames *f;
        (void)zb_next_deliver_entry(m->entries, &pos, &e);
        if (!(f = deliver_of_entry(m->channel, &e)))
            return ZB_ENOMEM;
        queue_delivery(c, f);
    }
    return 0;
}

/* What a waiting call looks for: a reply to ref (OK, ROUTED, ACKED,
 * ERROR), or to any ref of 8 octets from first to first + span - 1, or the
 * next DELIVER (ref NULL, span 0). */
typedef struct {
    const uint8_t *ref;
    size_t ref_len;
    int joining;         /* waiting for WELCOME: an ERROR with empty ref refuses */
    int want_delivery;   /* return on the next DELIVER */
    uint64_t first;      /* with span: refs first .. first + span - 1 */
    size_t span;
} waiter;

static int waits_for_ref(const waiter *w, zb_bytes ref)
{
    if (w->ref)
        return ref.size == w->ref_len && memcmp(ref.data, w->ref, w->ref_len) == 0;
    return w->span && ref.size == 8 && get_u64(ref.data) - w->first < w->span;
}

/* Read messages until one concerns w; returns it in *out (parsed into *m).
 * DELIVERs not wanted are queued, and so is each entry of a DELIVER_BATCH;
 * the entries of a BROKER_BATCH are read next, each as a message of its own;
 * stray ERRORs recorded; others dropped. */
static int wait_for(zb_client *c, const waiter *w, frames **out, zb_broker_msg *m, int64_t deadline)
{
    for (;;) {
        frames *f;
        int rc, code;
        int64_t left = deadline - monotonic_ms();
        if (w->want_delivery && c->deliveries_head) {
            f = c->deliveries_head;
            c->deliveries_head = f->next;
            if (!c->deliveries_head)
                c->deliveries_tail = NULL;
            f->next = NULL;
            zb_parse_broker(m, f->views, f->count);
            *out = f;
            return 0;
        }
        if (c->inbox_head) {
            f = c->inbox_head;
            c->inbox_head = f->next;
            if (!c->inbox_head)
                c->inbox_tail = NULL;
            f->next = NULL;
        } else {
            /* nothing left to read but the socket: first send what is held */
            if ((rc = flush_held(c)))
                return rc;
            rc = recv_frames(c, &f, left < 0 ? 0 : (int)left);
            if (rc == ZB_ETIMEOUT)
                return fail(c, rc, "timed out");
            if (rc)
                return rc;
        }
        code = zb_parse_broker(m, f->views, f->count);
        if (code) {
            fprintf(stderr, "zbclient: refused a broker message with code %d\n", code);
            if (f->count >= 1 && f->views[0].size == 4 && f->views[0].data[3] == ZB_DELIVER)
                refuse_delivery(c, f, code);
            frames_free(f);
            continue;
        }
        if (m->command == ZB_DELIVER) {
            if (w->want_delivery) {
                *out = f;
                return 0;
            }
            queue_delivery(c, f);
            continue;
        }
        if (m->command == ZB_DELIVER_BATCH) {
            /* the entries are queued, so a waiting call takes the first at once */
            rc = queue_batch(c, m);
            frames_free(f);
            if (rc)
                return fail(c, rc, "out of memory");
            continue;
        }
        if (m->command == ZB_BROKER_BATCH) {
            c->stats.batches_in++;
            rc = inbox_batch(c, m);
            frames_free(f);
            if (rc)
                return fail(c, rc, "out of memory");
            continue;
        }
        if (m->command == ZB_BYE) {
            frames_free(f);
            c->joined = 0;
            c->batching = 0;
            drop_held(c);
            c->n_sids = 0;
            return fail(c, ZB_EBYE, "the broker ended the session (BYE)");
        }
        if (m->command == ZB_DROPPED) {
            size_t i;
            for (i = 0; i < m->counts.size; i += 8)
                fprintf(stderr, "zbclient: the broker dropped %u message(s) for sid %08x\n",
                        get_u32(m->counts.data + i + 4), get_u32(m->counts.data + i));
            if (m->throttled) {
                c->throttled += m->throttled;
                fprintf(stderr,
                        "zbclient: the broker dropped %u unconfirmed publish(es) of this client: "
                        "its user is over its rate limit\n",
                        m->throttled);
            }
            frames_free(f);
            continue;
        }
        if (m->command == ZB_WELCOME && w->joining) {
            *out = f;
            return 0;
        }
        if (m->command == ZB_ERROR && w->joining && m->ref.size == 0) {
            *out = f;
            return 0;
        }
        if ((m->command == ZB_OK || m->command == ZB_ROUTED || m->command == ZB_ACKED ||
             m->command == ZB_ERROR) &&
            waits_for_ref(w, m->ref)) {
            *out = f;
            return 0;
        }
        if (m->command == ZB_ERROR) {
            fprintf(stderr, "zbclient: ERROR %u (ref ", m->code);
            print_hex(stderr, m->ref);
            fprintf(stderr, "): %.*s\n", (int)m->text.size, (const char *)m->text.data);
            if (record_stray(c, m)) {
                frames_free(f);
                return fail(c, ZB_ENOMEM, "out of memory");
            }
        }
        /* late replies, ASKs, ANSWERs and STATS_REPLYs (this client sends no REQUEST
         * or STATS) and BROKER_HEARTBEATs (it asks for none) are dropped */
        frames_free(f);
    }
}

static int refused(zb_client *c, const zb_broker_msg *m, const char *what)
{
    c->last_code = m->code;
    c->last_retry_after = m->retry_after;
    if (m->retry_after >= 0)
        return fail(c, ZB_EREFUSED, "%s refused: ERROR %u: %.*s (retry after %lld ms)", what,
                    m->code, (int)m->text.size, (const char *)m->text.data,
                    (long long)m->retry_after);
    return fail(c, ZB_EREFUSED, "%s refused: ERROR %u: %.*s", what, m->code, (int)m->text.size,
                (const char *)m->text.data);
}

static void new_ref(zb_client *c, uint8_t ref[8])
{
    put_u64(ref, c->next_ref++);
}

int zb_client_hello(zb_client *c, const uint8_t channel[16], const char *client_name, int timeout_ms)
{
    waiter w = {NULL, 0, 1, 0, 0, 0};
    zb_buf body;
    zb_msg msg;
    frames *f;
    zb_broker_msg m;
    int rc;
    c->last_code = 0;
    c->last_retry_after = -1;
    if (zb_encode_hello_body_ex(&body, client_name ? client_name : ZB_CLIENT_NAME,
                                c->ask_batch_commands))
        return fail(c, ZB_ENOMEM, "out of memory");
    rc = zb_encode_hello(&msg, channel, bytes_of(body.data, body.size));
    zb_buf_free(&body);
    if (rc)
        return fail(c, rc, "cannot encode HELLO");
    if ((rc = send_msg(c, &msg)))
        return rc;
    rc = wait_for(c, &w, &f, &m, monotonic_ms() + timeout_ms);
    if (rc)
        return rc;
    if (m.command == ZB_ERROR) {
        rc = refused(c, &m, "HELLO");
    } else {
        memcpy(c->channel, channel, 16);
        c->max_message_size = m.max_message_size;
        c->joined = 1;
        /* a WELCOME offers batches only when asked; check both all the same */
        c->batching = c->ask_batch_commands && m.batch_commands;
    }
    frames_free(f);
    return rc;
}

int zb_client_has_sid(const zb_client *c, const uint8_t sid[4])
{
    size_t i;
    for (i = 0; i < c->n_sids; i++)
        if (memcmp(c->sids + 4 * i, sid, 4) == 0)
            return 1;
    return 0;
}

static int drop_sid(zb_client *c, const uint8_t sid[4])
{
    size_t i;
    for (i = 0; i < c->n_sids; i++)
        if (memcmp(c->sids + 4 * i, sid, 4) == 0) {
            memmove(c->sids + 4 * i, c->sids + 4 * (i + 1), 4 * (c->n_sids - i - 1));
            c->n_sids--;
            return 1;
        }
    return 0;
}

int zb_client_subscribe(zb_client *c, const char *pattern, const char *queue, uint8_t sid_out[4],
                        int timeout_ms)
{
    uint8_t ref[8], sid[4];
    waiter w = {ref, 8, 0, 0, 0, 0};
    zb_msg msg;
    frames *f;
    zb_broker_msg m;
    uint8_t *grown;
    int rc;
    c->last_code = 0;
    c->last_retry_after = -1;
    if (!c->joined)
        return fail(c, ZB_ESTATE, "not joined");
    new_ref(c, ref);
    put_u32(sid, c->next_sid++);
    rc = zb_encode_subscribe(&msg, c->channel, bytes_of(ref, 8), sid, bytes_str(pattern),
                             bytes_str(queue));
    if (rc)
        return fail(c, rc, "invalid pattern or queue name");
    /* the sid is ours at once: a DELIVER may name it before the OK arrives */
    grown = realloc(c->sids, 4 * (c->n_sids + 1));
    if (!grown) {
        zb_msg_free(&msg);
        return fail(c, ZB_ENOMEM, "out of memory");
    }
    c->sids = grown;
    memcpy(c->sids + 4 * c->n_sids++, sid, 4);
    if ((rc = send_msg(c, &msg)) || (rc = wait_for(c, &w, &f, &m, monotonic_ms() + timeout_ms))) {
        drop_sid(c, sid);
        /* close the sid, so that a late OK leaves nothing open */
        if (rc == ZB_ETIMEOUT && zb_encode_unsubscribe(&msg, c->channel, bytes_of(NULL, 0),
                                                       bytes_of(sid, 4)) == 0)
            send_msg(c, &msg);
        return rc;
    }
    if (m.command == ZB_ERROR) {
        drop_sid(c, sid);
        rc = refused(c, &m, "SUBSCRIBE");
    } else if (sid_out) {
        memcpy(sid_out, sid, 4);
    }
    frames_free(f);
    return rc;
}

void zb_confirmation_free(zb_confirmation *conf)
{
    size_t i;
    for (i = 0; i < conf->n_errors; i++)
        free(conf->errors[i]);
    free(conf->errors);
    memset(conf, 0, sizeof *conf);
}

static int add_error_text(zb_confirmation *conf, const void *text, size_t len)
{
    char **grown = realloc(conf->errors, (conf->n_errors + 1) * sizeof *grown);
    char *copy = malloc(len + 1);
    if (!grown || !copy) {
        if (grown)
            conf->errors = grown;
        free(copy);
        return ZB_ENOMEM;
    }
    memcpy(copy, text, len);
    copy[len] = 0;
    conf->errors = grown;
    conf->errors[conf->n_errors++] = copy;
    return 0;
}

/* Add one ACKED body to the confirmation. */
static int add_acked(zb_confirmation *conf, zb_bytes body)
{
    zb_ack ack;
    size_t i;
    int rc = 0;
    conf->acked++;
    if (zb_decode_ack(&ack, body)) {
        static const char msg[] = "publisher could not decode ACKED body";
        return add_error_text(conf, msg, sizeof msg - 1);
    }
    conf->delivered += ack.delivered;
    conf->dropped += ack.dropped;
    for (i = 0; rc == 0 && i < ack.n_errors; i++)
        rc = add_error_text(conf, ack.errors[i].data, ack.errors[i].size);
    zb_ack_free(&ack);
    return rc;
}

/* The PUBLISH of a new message (its own id and timestamp), under a new ref
 * (written to ref) when confirmed. */
static int encode_publish(zb_client *c, zb_msg *msg, const char *topic, const zb_header *headers,
                          size_t n_headers, zb_bytes payload, int confirmed, uint8_t ref[8])
{
    uint8_t id[16];
    zb_buf body;
    int rc;
    if (getrandom(id, sizeof id, 0) != (ssize_t)sizeof id)
        return fail(c, ZB_ENOMEM, "getrandom failed");
    if ((rc = zb_encode_message_body(&body, id, zb_time_now(), headers, n_headers, payload)))
        return fail(c, rc, "invalid headers");
    if (body.size > c->max_message_size) {
        zb_buf_free(&body);
        return fail(c, ZB_TOO_LARGE, "message body of %zu octets exceeds max_message_size %llu",
                    body.size, (unsigned long long)c->max_message_size);
    }
    if (confirmed)
        new_ref(c, ref);
    rc = zb_encode_publish(msg, c->channel, bytes_of(ref, confirmed ? 8 : 0), bytes_str(topic),
                           bytes_of(body.data, body.size));
    zb_buf_free(&body);
    return rc ? fail(c, rc, "invalid topic") : 0;
}

int zb_client_publish(zb_client *c, const char *topic, const zb_header *headers, size_t n_headers,
                      zb_bytes payload, zb_confirmation *confirm, int timeout_ms)
{
    uint8_t ref[8];
    waiter w = {ref, 8, 0, 0, 0, 0};
    int64_t deadline = monotonic_ms() + timeout_ms;
    zb_msg msg;
    int routed = 0, rc;
    c->last_code = 0;
    c->last_retry_after = -1;
    if (confirm)
        memset(confirm, 0, sizeof *confirm);
    if (!c->joined)
        return fail(c, ZB_ESTATE, "not joined");
    if ((rc = encode_publish(c, &msg, topic, headers, n_headers, payload, confirm != NULL, ref)))
        return rc;
    if ((rc = send_msg(c, &msg)) || !confirm)
        return rc;
    /* ROUTED, then as many ACKEDs as it counts (tolerating ACKEDs first) */
    while (!routed || confirm->acked < confirm->routed) {
        frames *f;
        zb_broker_msg m;
        if ((rc = wait_for(c, &w, &f, &m, deadline)))
            return rc;
        if (m.command == ZB_ERROR) {
            rc = refused(c, &m, "PUBLISH");
        } else if (m.command == ZB_ROUTED) {
            routed = 1;
            confirm->routed = m.count;
        } else if (m.command == ZB_ACKED) {
            rc = add_acked(confirm, m.body);
        }
        frames_free(f);
        if (rc)
            return rc;
    }
    return 0;
}

int zb_client_publish_n(zb_client *c, const char *topic, const zb_header *headers, size_t n_headers,
                        zb_bytes payload, size_t n, zb_confirmation *confirms, int timeout_ms)
{
    uint8_t ref[8];
    waiter w = {NULL, 0, 0, 0, c->next_ref, confirms ? n : 0};
    int64_t deadline = monotonic_ms() + timeout_ms;
    uint8_t *state; /* per message: 1 ROUTED seen, 2 also every ACKED */
    size_t i, done = 0;
    int rc = 0;
    c->last_code = 0;
    c->last_retry_after = -1;
    if (confirms)
        memset(confirms, 0, n * sizeof *confirms);
    if (!c->joined)
        return fail(c, ZB_ESTATE, "not joined");
    for (i = 0; i < n; i++) {
        zb_msg msg;
        if ((rc = encode_publish(c, &msg, topic, headers, n_headers, payload, confirms != NULL,
                                 ref)) ||
            (rc = hold_msg(c, &msg))) {
            flush_held(c); /* never drop a held ACK; what was published goes too */
            return rc;
        }
    }
    if ((rc = flush_held(c)) || !confirms || n == 0)
        return rc;
    if (!(state = calloc(n, 1)))
        return fail(c, ZB_ENOMEM, "out of memory");
    /* each ROUTED, then as many ACKEDs as it counts (tolerating ACKEDs first) */
    while (rc == 0 && done < n) {
        frames *f;
        zb_broker_msg m;
        zb_confirmation *conf;
        if ((rc = wait_for(c, &w, &f, &m, deadline)))
            break;
        i = (size_t)(get_u64(m.ref.data) - w.first);
        conf = &confirms[i];
        if (m.command == ZB_ERROR) {
            rc = refused(c, &m, "PUBLISH");
        } else if (m.command == ZB_ROUTED && !state[i]) {
            state[i] = 1;
            conf->routed = m.count;
        } else if (m.command == ZB_ACKED) {
            rc = add_acked(conf, m.body);
        }
        if (rc == 0 && state[i] == 1 && conf->acked >= conf->routed) {
            state[i] = 2;
            done++;
        }
        frames_free(f);
    }
    free(state);
    return rc;
}

void zb_delivery_free(zb_delivery *d)
{
    if (d->body_ok)
        zb_message_free(&d->message);
    frames_free(d->_frames);
    memset(d, 0, sizeof *d);
}

int zb_client_next_delivery(zb_client *c, zb_delivery *out, int timeout_ms)
{
    waiter w = {NULL, 0, 0, 1, 0, 0};
    frames *f;
    zb_broker_msg m;
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = wait_for(c, &w, &f, &m, monotonic_ms() + timeout_ms)))
        return rc;
    out->_frames = f;
    out->token = m.token;
    out->topic = m.topic;
    out->body = m.body;
    out->sids = m.sids;
    out->body_ok = zb_decode_message(&out->message, m.body, 0) == 0;
    return 0;
}

int zb_client_ack(zb_client *c, const zb_delivery *d, uint64_t delivered, uint64_t dropped,
                  const zb_bytes *errors, size_t n_errors)
{
    zb_buf body;
    zb_msg msg;
    int rc;
    if (d->token.size == 0)
        return 0; /* never ACK an empty token */
    if ((rc = zb_encode_ack_body(&body, delivered, dropped, errors, n_errors)))
        return fail(c, rc, "cannot encode ACK body");
    rc = zb_encode_ack(&msg, c->channel, d->token, bytes_of(body.data, body.size));
    zb_buf_free(&body);
    if (rc)
        return fail(c, rc, "cannot encode ACK");
    return hold_msg(c, &msg);
}

int zb_client_disconnect(zb_client *c, int timeout_ms)
{
    uint8_t ref[8];
    waiter w = {ref, 8, 0, 0, 0, 0};
    zb_msg msg;
    frames *f;
    zb_broker_msg m;
    int rc;
    c->last_code = 0;
    c->last_retry_after = -1;
    if (!c->joined)
        return 0;
    new_ref(c, ref);
    if ((rc = zb_encode_disconnect(&msg, c->channel, bytes_of(ref, 8))))
        return fail(c, rc, "cannot encode DISCONNECT");
    if ((rc = send_msg(c, &msg)) || (rc = wait_for(c, &w, &f, &m, monotonic_ms() + timeout_ms)))
        return rc;
    if (m.command == ZB_ERROR)
        rc = refused(c, &m, "DISCONNECT");
    else if (m.command == ZB_OK) {
        c->joined = 0;
        c->batching = 0; /* a new session has none until its HELLO asks */
        c->n_sids = 0;
    }
    frames_free(f);
    return rc;
}
