/* zbclient: a small zmqbus/1 client on libzmq and msgpack-c.
 *
 * Written from docs/protocol.md and tests/vectors/ alone.  Two layers:
 *
 *   - the codec (zb_encode_*, zb_parse_broker, zb_decode_*, zb_check_*): pure
 *     functions that build client messages and check broker messages and
 *     bodies; they touch no socket and are what tests/vectors/ checks;
 *   - the client (zb_client_*): one DEALER connection joined to one channel,
 *     over CURVE if asked (zb_client_set_curve), with blocking calls that
 *     each take a timeout.
 *
 * Functions that can fail return 0 on success and otherwise a zmqbus error
 * code (400, 406, 422, ...) or one of the negative ZB_E* codes below.
 */
#ifndef ZBCLIENT_H
#define ZBCLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZB_CLIENT_NAME "zmqbus-c/0.1.0"

/* Commands (the fourth header octet). */
enum {
    ZB_HELLO = 0x01, ZB_SUBSCRIBE = 0x02, ZB_UNSUBSCRIBE = 0x03, ZB_PUBLISH = 0x04,
    ZB_ACK = 0x05, ZB_DISCONNECT = 0x06, ZB_REQUEST = 0x07, ZB_REPLY = 0x08,
    ZB_BATCH = 0x0C, ZB_WELCOME = 0x81, ZB_OK = 0x82, ZB_DELIVER = 0x83, ZB_ROUTED = 0x84,
    ZB_ACKED = 0x85, ZB_ASK = 0x86, ZB_ANSWER = 0x87, ZB_BROKER_HEARTBEAT = 0x88,
    ZB_BYE = 0x89, ZB_STATS_REPLY = 0x8A, ZB_DROPPED = 0x8B, ZB_DELIVER_BATCH = 0x8C,
    ZB_BROKER_BATCH = 0x8D, ZB_ERROR = 0x8F
};
/* HEARTBEAT (0x09), STATS (0x0A) and PUBLISH_BATCH (0x0B) are client commands
 * this client does not send: it asks for no heartbeats and no batches of
 * messages, so the broker never expects them. It still parses DELIVER_BATCH
 * (and the client hands each entry on as a DELIVER), though a broker sends it
 * only to clients that asked for batches. The codec builds BATCH
 * (zb_encode_batch) and parses BROKER_BATCH, and the client handles each entry
 * of a BROKER_BATCH as the message it stands for; it asks for
 * "batch_commands" only when told to (zb_client_ask_batch_commands), and then
 * sends its ACKs and zb_client_publish_n's PUBLISHes as BATCHes. */

/* Error codes of the protocol. */
enum {
    ZB_BAD_FRAMES = 400, ZB_PERMISSION_DENIED = 401, ZB_NOT_JOINED = 403, ZB_UNKNOWN_COMMAND = 405,
    ZB_BAD_TOPIC = 406, ZB_CHANNEL_MISMATCH = 409, ZB_SID_IN_USE = 412,
    ZB_TOO_LARGE = 413, ZB_BAD_BODY = 422, ZB_LIMIT_REACHED = 429, ZB_INTERNAL = 500,
    ZB_VERSION_NOT_SUPPORTED = 505
};

/* Local failures (never on the wire). */
enum {
    ZB_ETIMEOUT = -1, /* no reply within the timeout */
    ZB_EZMQ = -2,     /* a libzmq call failed */
    ZB_ENOMEM = -3,   /* out of memory */
    ZB_ESTATE = -4,   /* call not valid in this state (not joined, ...) */
    ZB_EREFUSED = -5, /* the broker answered ERROR; see zb_client_last_error */
    ZB_EBYE = -6,     /* the broker ended the session (BYE: it is shutting down) */
    ZB_EAUTH = -7     /* the broker refused the handshake: a CURVE key it does not know,
                         no key where it needs one, or a wrong server key; see
                         zb_client_last_error */
};

/* Sizes. */
#define ZB_CHANNEL_SIZE 16
#define ZB_MAX_REF 32
#define ZB_MAX_REQUEST_REF 8
/* A reply token: session (8), tag (16), then a request ref of 1 to 8 octets. */
#define ZB_MIN_REPLY_TOKEN 25
#define ZB_SID_SIZE 4
#define ZB_MAX_TOPIC 256
#define ZB_MAX_QUEUE 64

/* A borrowed run of octets. */
typedef struct {
    const uint8_t *data;
    size_t size;
} zb_bytes;

/* An owned buffer (malloc'd); release with zb_buf_free. */
typedef struct {
    uint8_t *data;
    size_t size;
} zb_buf;
void zb_buf_free(zb_buf *buf);

/* A header of a message: UTF-8 key and value, with lengths (text may hold NUL). */
typedef struct {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
} zb_header;

/* An instant: seconds since the Unix epoch and nanoseconds (0..999999999). */
typedef struct {
    int64_t sec;
    uint32_t nsec;
} zb_time;
zb_time zb_time_now(void);

/* ---- text rules ---- */

enum { ZB_TOPIC = 0, ZB_PATTERN = 1, ZB_QUEUE = 2 };
/* 1 if s is valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF). */
int zb_utf8_valid(const uint8_t *s, size_t len);
/* 0 if s is a valid topic, pattern or queue name (kind), else 406. */
int zb_check_name(const uint8_t *s, size_t len, int kind);

/* ---- client messages ---- */

#define ZB_MAX_FRAMES 6
/* A message to send: up to 6 owned frames. Release with zb_msg_free. */
typedef struct {
    zb_buf frames[ZB_MAX_FRAMES];
    size_t count;
} zb_msg;
void zb_msg_free(zb_msg *msg);

/* Each encoder checks its fields (sizes: 400, text: 406) and fills msg; on
 * failure msg is left empty. Bodies are passed already encoded. */
int zb_encode_hello(zb_msg *msg, const uint8_t channel[16], zb_bytes body);
int zb_encode_subscribe(zb_msg *msg, const uint8_t channel[16], zb_bytes ref,
                        const uint8_t sid[4], zb_bytes pattern, zb_bytes queue);
int zb_encode_unsubscribe(zb_msg *msg, const uint8_t channel[16], zb_bytes ref, zb_bytes sids);
int zb_encode_publish(zb_msg *msg, const uint8_t channel[16], zb_bytes ref, zb_bytes topic,
                      zb_bytes body);
int zb_encode_ack(zb_msg *msg, const uint8_t channel[16], zb_bytes token, zb_bytes body);
int zb_encode_disconnect(zb_msg *msg, const uint8_t channel[16], zb_bytes ref);
int zb_encode_request(zb_msg *msg, const uint8_t channel[16], zb_bytes ref, zb_bytes topic,
                      zb_bytes body);
int zb_encode_reply(zb_msg *msg, const uint8_t channel[16], zb_bytes token, zb_bytes body);

/* ---- bodies ---- */

/* HELLO body {"client": name}; name NULL gives the empty map. */
int zb_encode_hello_body(zb_buf *out, const char *client_name);
/* The same, and with batch_commands non-zero "batch_commands": true after
 * "client" (asking for batches of commands). */
int zb_encode_hello_body_ex(zb_buf *out, const char *client_name, int batch_commands);
/* Message body [id, timestamp, headers, payload]. */
int zb_encode_message_body(zb_buf *out, const uint8_t id[16], zb_time ts, const zb_header *headers,
                           size_t n_headers, zb_bytes payload);
/* Reply body: a message body and a fifth element, nil (error NULL) or the error text. */
int zb_encode_reply_body(zb_buf *out, const uint8_t id[16], zb_time ts, const zb_header *headers,
                         size_t n_headers, zb_bytes payload, const zb_bytes *error);
/* ACK body [delivered, dropped, [errors...]]. */
int zb_encode_ack_body(zb_buf *out, uint64_t delivered, uint64_t dropped, const zb_bytes *errors,
                       size_t n_errors);

/* A decoded message or reply body. The views point into memory owned by the
 * struct; release with zb_message_free. */
typedef struct {
    uint8_t id[16];
    zb_time timestamp;
    zb_header *headers;
    size_t n_headers;
    zb_bytes payload;
    int has_error;   /* reply bodies: 1 if the error element is a str */
    zb_bytes error;  /* the error text, when has_error */
    void *_storage;  /* private */
} zb_message;
/* 0 or 422. is_reply selects the reply body rules. */
int zb_decode_message(zb_message *out, zb_bytes body, int is_reply);
void zb_message_free(zb_message *msg);

/* A decoded ACK body; release with zb_ack_free. */
typedef struct {
    uint64_t delivered;
    uint64_t dropped;
    zb_bytes *errors;
    size_t n_errors;
    void *_storage; /* private */
} zb_ack;
int zb_decode_ack(zb_ack *out, zb_bytes body);
void zb_ack_free(zb_ack *ack);

/* A map with str keys and, if present, a non-negative int "heartbeat" and
 * booleans "batch" and "batch_commands" (HELLO body): 0 or 422. */
int zb_check_hello_body(zb_bytes body);
/* A map with str keys (STATS_REPLY body): 0 or 422. */
int zb_check_stats_body(zb_bytes body);
/* WELCOME body: 0 and *max_message_size, or 422 (also for a "heartbeat"
 * that is not a non-negative int or a "batch" or "batch_commands" that is not
 * a boolean). */
int zb_decode_welcome_body(zb_bytes body, uint64_t *max_message_size);
/* The same, and *batch_commands 1 if it says "batch_commands": true, else 0. */
int zb_decode_welcome_body_ex(zb_bytes body, uint64_t *max_message_size, int *batch_commands);

/* ---- broker messages ---- */

/* The frames of a broker message, checked. Views point into the frames
 * given to zb_parse_broker. Which fields are set depends on the command. */
typedef struct {
    int command;
    zb_bytes channel;
    zb_bytes ref;   /* OK, ROUTED, ACKED, ANSWER, STATS_REPLY, ERROR */
    zb_bytes token; /* DELIVER (may be empty), ASK */
    zb_bytes topic; /* DELIVER, ASK */
    zb_bytes body;  /* WELCOME, DELIVER, ACKED, ASK, ANSWER, STATS_REPLY */
    zb_bytes sids;  /* DELIVER, ASK */
    zb_bytes counts; /* DROPPED: (sid, count) pairs of 8 octets, maybe none */
    uint32_t throttled; /* DROPPED: this client's unconfirmed publishes its user's
                           rate limit dropped */
    zb_bytes entries; /* DELIVER_BATCH: deliver-entries, read with zb_next_deliver_entry;
                         BROKER_BATCH: command entries, read with zb_next_command_entry */
    uint32_t count; /* ROUTED */
    uint16_t code;  /* ERROR */
    zb_bytes text;  /* ERROR */
    int64_t retry_after; /* ERROR: milliseconds until the same request may pass
                            (429 for a rate limit), or -1 when the frame is empty */
    uint64_t max_message_size; /* WELCOME */
    int batch_commands;        /* WELCOME: 1 if it offered batches of commands */
} zb_broker_msg;
/* 0, or the code the message is refused with (400, 405, 406, 422, 505). */
int zb_parse_broker(zb_broker_msg *out, const zb_bytes *frames, size_t n_frames);

/* One entry of a DELIVER_BATCH: a DELIVER with an empty token. Views point
 * into the entries frame. */
typedef struct {
    zb_bytes sids;  /* 4 * n octets */
    zb_bytes topic;
    zb_bytes body;
} zb_deliver_entry;
/* Read the deliver-entry at *pos of an entries frame
 *   sids-length(2) sids topic-length(2) topic body-length(4) body
 * (lengths unsigned big-endian) into *out and move *pos past it: 0, or 400
 * for an entry that is truncated, has an empty topic or has sids that are
 * empty or not a multiple of 4 octets. The topic rules are not checked here
 * (zb_parse_broker checks them). Loop while *pos < entries.size. */
int zb_next_deliver_entry(zb_bytes entries, size_t *pos, zb_deliver_entry *out);

/* ---- batches of commands (BATCH, BROKER_BATCH) ---- */

/* Which side's commands an entries frame holds: a BATCH (client) holds
 * PUBLISH, ACK, REQUEST and REPLY; a BROKER_BATCH (broker) DELIVER, ROUTED,
 * ACKED, ASK and ANSWER. */
enum { ZB_CLIENT_ENTRIES = 0, ZB_BROKER_ENTRIES = 1 };
#define ZB_MAX_ENTRY_FRAMES 4
/* One command entry: the command and its frames after the channel frame, as
 * views into the entries frame. The message it stands for is [the header of
 * command, the batch's channel frame, frames...]. */
typedef struct {
    int command;
    size_t count;
    zb_bytes frames[ZB_MAX_ENTRY_FRAMES];
} zb_command_entry;
/* The frames an entry of command holds on that side, or 0 if a batch of
 * that side may not hold it. */
int zb_entry_frames(int command, int side);
/* Read the command-entry at *pos of an entries frame
 *   command(1) then, per frame of the command, frame-length(4) frame
 * (lengths unsigned big-endian) into *out and move *pos past it: 0, or 400
 * for a command not allowed on that side or an entry that is truncated. The
 * frames themselves are not checked here (each entry is checked as the
 * message alone). Loop while *pos < entries.size. */
int zb_next_command_entry(zb_bytes entries, size_t *pos, int side, zb_command_entry *out);
/* 0 if entries is one or more command entries of that side and nothing
 * else, otherwise 400. */
int zb_check_command_entries(zb_bytes entries, int side);
/* BATCH on channel carrying msgs[0..n) in order: each a PUBLISH, ACK,
 * REQUEST or REPLY built by the encoders above on the same channel. 400 if
 * n is 0 or a message cannot be an entry. Only to a broker whose WELCOME
 * offered "batch_commands". */
int zb_encode_batch(zb_msg *msg, const uint8_t channel[16], const zb_msg *msgs, size_t n);

/* ---- the client ---- */

typedef struct zb_client zb_client;

/* A DELIVER, with its frames and its decoded body; release with zb_delivery_free. */
typedef struct {
    zb_bytes token;    /* empty: do not ACK */
    zb_bytes topic;
    zb_bytes body;
    zb_bytes sids;     /* 4 * n octets */
    int body_ok;       /* 0 if the body could not be decoded */
    zb_message message; /* valid when body_ok */
    void *_frames;     /* private */
} zb_delivery;
void zb_delivery_free(zb_delivery *d);

/* The confirmation of one confirmed publish: the sum of its ACKEDs. */
typedef struct {
    uint32_t routed;  /* ROUTED count */
    uint32_t acked;   /* ACKEDs received */
    uint64_t delivered;
    uint64_t dropped;
    char **errors;    /* NUL-terminated copies */
    size_t n_errors;
} zb_confirmation;
void zb_confirmation_free(zb_confirmation *c);

/* An ERROR the client could not match to a call (unconfirmed publish, ACK, ...). */
typedef struct {
    uint16_t code;
    zb_buf channel;
    zb_buf ref;
    char *text;
    int64_t retry_after; /* milliseconds, or -1: none given */
} zb_stray_error;

/* A client whose DEALER is not connected yet, so that options can be set
 * (zb_client_set_curve) before zb_client_connect. NULL on failure. */
zb_client *zb_client_create(void);
/* CurveZMQ: the broker's public key and this client's key pair, each 40
 * characters of Z85 (see zb_load_public_key, zb_load_keypair). Before
 * zb_client_connect. 0, ZB_ESTATE once connected, or ZB_EZMQ when libzmq
 * has no CURVE or refuses a key (see zb_client_last_error). */
int zb_client_set_curve(zb_client *c, const char *server_key, const char *public_key,
                        const char *secret_key);
/* Connect to endpoint (once): 0, ZB_ESTATE or ZB_EZMQ. The handshake runs in
 * the background; a handshake the broker refuses fails the next call that
 * waits for the broker (zb_client_hello, ...) with ZB_EAUTH at once, and
 * zb_client_last_error says "authentication refused by the broker at
 * ENDPOINT: " and why. */
int zb_client_connect(zb_client *c, const char *endpoint);
/* zb_client_create, then zb_client_connect: NULL on failure. */
zb_client *zb_client_new(const char *endpoint);
/* Close the socket (after zb_client_disconnect, for a clean close) and free. */
void zb_client_destroy(zb_client *c);
/* Description of the last failure, or "". */
const char *zb_client_last_error(const zb_client *c);
/* The code of the last ERROR that refused a call (ZB_EREFUSED), else 0. */
int zb_client_last_code(const zb_client *c);
/* The retry-after of that ERROR: milliseconds after which the same call may
 * pass (429: the user's rate limit), or -1 when it gave none (or no ERROR). */
int64_t zb_client_last_retry_after(const zb_client *c);
/* This client's unconfirmed publishes that the broker dropped because its
 * user was over its rate limit, as its DROPPEDs counted them so far (each
 * DROPPED with some is also logged to stderr). */
uint64_t zb_client_throttled(const zb_client *c);

/* Join a channel: HELLO, then wait for WELCOME. */
int zb_client_hello(zb_client *c, const uint8_t channel[16], const char *client_name, int timeout_ms);
uint64_t zb_client_max_message_size(const zb_client *c);

/* Batches of commands (off unless asked for).
 *
 * zb_client_ask_batch_commands(c, 1) before zb_client_hello puts
 * "batch_commands": true in the HELLO. If the WELCOME offers them
 * (zb_client_batching then returns 1, until DISCONNECT or BYE), the client
 * holds its ACKs (zb_client_ack, and the error ACK of a DELIVER it refuses)
 * and the PUBLISHes of zb_client_publish_n instead of sending them, and sends
 * what it holds, in order, before it waits on the socket, before it sends any
 * other message, in zb_client_flush and zb_client_destroy, and before it
 * holds a message that would take what it holds past ZB_BATCH_BYTES of
 * entries: two or more as one BATCH, one as the message alone (so a BATCH
 * has at most ZB_BATCH_BYTES of entries, unless one entry is larger: that
 * one leaves alone). So the ACKs of the DELIVER entries of one BROKER_BATCH
 * leave as one BATCH. Otherwise nothing is held and every message is sent at
 * once, exactly as without asking. */
#define ZB_BATCH_BYTES (64 * 1024)
void zb_client_ask_batch_commands(zb_client *c, int on);
int zb_client_batching(const zb_client *c);
/* Send whatever is held (nothing when not batching). */
int zb_client_flush(zb_client *c);
/* Batches counted over the client's life. */
typedef struct {
    uint64_t batches_in;  /* BROKER_BATCHes received (well-formed ones) */
    uint64_t entries_in;  /* their entries */
    uint64_t batches_out; /* BATCHes sent */
    uint64_t entries_out; /* their entries */
} zb_batch_stats;
void zb_client_batch_stats(const zb_client *c, zb_batch_stats *out);
/* Open a subscription (queue NULL or "" for a plain one); wait for OK. */
int zb_client_subscribe(zb_client *c, const char *pattern, const char *queue, uint8_t sid_out[4],
                        int timeout_ms);
/* Publish. With confirm NULL: unconfirmed (empty ref), returns once sent.
 * Otherwise wait for ROUTED and its ACKEDs and sum them into *confirm. */
int zb_client_publish(zb_client *c, const char *topic, const zb_header *headers, size_t n_headers,
                      zb_bytes payload, zb_confirmation *confirm, int timeout_ms);
/* Publish the message n times (each with its own id and timestamp) without
 * waiting in between: when batching, as BATCHes (see above), otherwise as n
 * PUBLISHes. With confirms NULL: unconfirmed, returns once sent. Otherwise
 * confirms holds n confirmations: wait until each has its ROUTED and its
 * ACKEDs, within timeout_ms for all; an ERROR for any of them refuses the
 * call (ZB_EREFUSED). If a message cannot be encoded (they all have the same
 * topic, headers and payload, so this is the first), the call fails; any
 * before it are still sent, and their confirmations not waited for. */
int zb_client_publish_n(zb_client *c, const char *topic, const zb_header *headers, size_t n_headers,
                        zb_bytes payload, size_t n, zb_confirmation *confirms, int timeout_ms);
/* Wait for the next DELIVER (each entry of a DELIVER_BATCH comes as one). */
int zb_client_next_delivery(zb_client *c, zb_delivery *out, int timeout_ms);
/* 1 if this client holds sid open. */
int zb_client_has_sid(const zb_client *c, const uint8_t sid[4]);
/* ACK a DELIVER (nothing is sent when its token is empty; when batching, the
 * ACK is held, see above). */
int zb_client_ack(zb_client *c, const zb_delivery *d, uint64_t delivered, uint64_t dropped,
                  const zb_bytes *errors, size_t n_errors);
/* DISCONNECT and wait for its OK: every message sent before is then processed. */
int zb_client_disconnect(zb_client *c, int timeout_ms);

/* Raw access, for tests: send any frames; ERRORs that match no call are
 * collected and can be taken with zb_client_take_stray_errors. */
int zb_client_send_raw(zb_client *c, const zb_bytes *frames, size_t n_frames);
const uint8_t *zb_client_channel(const zb_client *c);
/* The stray ERRORs received so far; the caller frees them with zb_stray_errors_free. */
zb_stray_error *zb_client_take_stray_errors(zb_client *c, size_t *count);
void zb_stray_errors_free(zb_stray_error *errors, size_t count);

/* ---- helpers ---- */

/* Parse a UUID ("00112233-4455-...") or 32 hex digits into 16 octets: 0 or -1. */
int zb_parse_channel(const char *text, uint8_t out[16]);
/* Parse hex into a malloc'd buffer: 0 or -1. */
int zb_hex_decode(const char *hex, zb_buf *out);

/* CURVE keys, as 40 characters of Z85 and a NUL. Each takes Z85 text or the
 * path of a zmq.auth certificate file (what `zmqbus keygen NAME` writes: ZPL
 * text with public-key = "..." and, in NAME.key_secret, secret-key = "...").
 * 0, or -1 with a reason in err. */
#define ZB_KEY_TEXT 41
/* A public key (the broker's): Z85 text, or a certificate's public-key. */
int zb_load_public_key(const char *spec, char public_key[ZB_KEY_TEXT], char *err, size_t err_size);
/* A key pair: a secret key in Z85 (its public key derived), "PUBLIC:SECRET"
 * in Z85, or a secret certificate file (NAME.key_secret). */
int zb_load_keypair(const char *spec, char public_key[ZB_KEY_TEXT], char secret_key[ZB_KEY_TEXT],
                    char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
#endif
