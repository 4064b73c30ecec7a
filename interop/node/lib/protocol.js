// The zmqbus/1 codec: client messages, broker messages and bodies.
// Written from docs/protocol.md and tests/vectors/ alone. No sockets here.
//
// Bodies are written with @msgpack/msgpack. They are read with the strict
// reader in ./msgpack-reader.js, because the protocol needs what a general
// decoder hides: a float is not an integer, a str is not a bin, and text must
// be valid UTF-8.

import { Encoder, ExtData } from "@msgpack/msgpack";
import { readMsgpack, textOf } from "./msgpack-reader.js";

export const CMD = {
  HELLO: 0x01,
  SUBSCRIBE: 0x02,
  UNSUBSCRIBE: 0x03,
  PUBLISH: 0x04,
  ACK: 0x05,
  DISCONNECT: 0x06,
  REQUEST: 0x07,
  REPLY: 0x08,
  BATCH: 0x0c,
  STREAM: 0x0d,
  CONSUME: 0x0e,
  STREAM_ACK: 0x0f,
  WELCOME: 0x81,
  OK: 0x82,
  DELIVER: 0x83,
  ROUTED: 0x84,
  ACKED: 0x85,
  ASK: 0x86,
  ANSWER: 0x87,
  BROKER_HEARTBEAT: 0x88,
  BYE: 0x89,
  STATS_REPLY: 0x8a,
  DROPPED: 0x8b,
  DELIVER_BATCH: 0x8c,
  BROKER_BATCH: 0x8d,
  ERROR: 0x8f,
  STREAM_REPLY: 0x90,
  STORED: 0x91,
  STREAM_MSG: 0x92,
};
// HEARTBEAT (0x09), STATS (0x0a) and PUBLISH_BATCH (0x0b) are client commands
// this client does not send: it asks for no heartbeats and no batches of
// messages, so the broker never expects them. It still parses DELIVER_BATCH
// (and the client hands each entry on as a DELIVER), though a broker sends it
// only to clients that asked for batches. The codec builds BATCH (encodeBatch)
// and parses BROKER_BATCH, and the client handles each entry of a BROKER_BATCH
// as the message it stands for; it asks for "batch_commands" only when told to
// (new Client(endpoint, {batchCommands: true})), and then sends its ACKs and
// the PUBLISHes it has several of at once as BATCHes.
// The durable streams (OPTIONAL in the spec) are all here: STREAM, CONSUME and
// STREAM_ACK are built (encodeStream, encodeConsume, encodeStreamAck), and
// STREAM_REPLY, STORED and STREAM_MSG parsed; the client asks for "streams" (STORED)
// in every HELLO.

export const CODE = {
  BAD_FRAMES: 400,
  PERMISSION_DENIED: 401,
  NOT_JOINED: 403,
  NOT_FOUND: 404,
  UNKNOWN_COMMAND: 405,
  BAD_TOPIC: 406,
  CHANNEL_MISMATCH: 409,
  CONFLICT: 410,
  SID_IN_USE: 412,
  TOO_LARGE: 413,
  BAD_BODY: 422,
  LIMIT_REACHED: 429,
  INTERNAL: 500,
  VERSION_NOT_SUPPORTED: 505,
  STORE_FAILED: 507,
};

/** The kind frame of STREAM_ACK. */
export const ACK_KIND = { ACK: 1, NAK: 2, PROGRESS: 3, TERM: 4 };

export const MAX_REF = 32;
export const MAX_REQUEST_REF = 8;
// A reply token: session (8), tag (16), then a request ref of 1 to 8 octets.
export const MIN_REPLY_TOKEN = 25;
// A stream (or durable consumer) name: 1 to 64 of A-Z a-z 0-9 _ -.
export const MAX_STREAM_NAME = 64;
const STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

// Frames per broker command.
const BROKER_FRAMES = new Map([
  [CMD.WELCOME, 3],
  [CMD.OK, 3],
  [CMD.DELIVER, 6],
  [CMD.ROUTED, 4],
  [CMD.ACKED, 4],
  [CMD.ASK, 6],
  [CMD.ANSWER, 4],
  [CMD.BROKER_HEARTBEAT, 2],
  [CMD.BYE, 2],
  [CMD.STATS_REPLY, 4],
  [CMD.DROPPED, 4],
  [CMD.DELIVER_BATCH, 3],
  [CMD.BROKER_BATCH, 3],
  [CMD.ERROR, 6],
  [CMD.STREAM_REPLY, 4],
  [CMD.STORED, 6],
  [CMD.STREAM_MSG, 7],
]);

// Commands a BATCH (client) / BROKER_BATCH (broker) entry may hold, with the
// number of frames the entry has after the channel frame.
export const CLIENT_ENTRY_FRAMES = new Map([
  [CMD.PUBLISH, 3],
  [CMD.ACK, 2],
  [CMD.REQUEST, 3],
  [CMD.REPLY, 2],
  [CMD.STREAM_ACK, 4],
]);
export const BROKER_ENTRY_FRAMES = new Map([
  [CMD.DELIVER, 4],
  [CMD.ROUTED, 2],
  [CMD.ACKED, 2],
  [CMD.ASK, 4],
  [CMD.ANSWER, 2],
  [CMD.STORED, 4],
  [CMD.STREAM_MSG, 5],
]);

// Instants a receiver accepts: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
const MIN_SECONDS = -62135596800n;
const MAX_SECONDS = 253402300799n;

/** A message refused for breaking the protocol, with its error code. */
export class ProtocolError extends Error {
  constructor(code, detail) {
    super(`${code}: ${detail}`);
    this.code = code;
    this.detail = detail;
  }
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export function bytes(value) {
  if (typeof value === "string") return utf8.encode(value);
  return value instanceof Uint8Array ? value : Uint8Array.from(value);
}

export function isUtf8(data) {
  try {
    strictUtf8.decode(data);
    return true;
  } catch {
    return false;
  }
}

export function hex(data) {
  return Buffer.from(data).toString("hex");
}

export function fromHex(text) {
  if (!/^([0-9a-fA-F]{2})*$/.test(text)) throw new Error(`not hex: ${text}`);
  return new Uint8Array(Buffer.from(text, "hex"));
}

/** 16 octets from a UUID ("00112233-4455-...", RFC 4122 order) or 32 hex digits. */
export function parseChannel(text) {
  const digits = text.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(digits)) throw new Error(`not a UUID: ${text}`);
  return fromHex(digits);
}

// ---- topics, patterns and queue names ----

// Control and whitespace characters no token may contain.
function forbidden(cp) {
  return (
    cp <= 0x20 ||
    (cp >= 0x7f && cp <= 0xa0) ||
    cp === 0x1680 ||
    (cp >= 0x2000 && cp <= 0x200a) ||
    cp === 0x2028 ||
    cp === 0x2029 ||
    cp === 0x202f ||
    cp === 0x205f ||
    cp === 0x3000
  );
}

/** Throw 406 unless data (octets or a string) is a valid topic, pattern or queue name. */
export function checkName(data, kind = "topic") {
  const raw = bytes(data);
  const max = kind === "queue" ? 64 : 256;
  if (raw.length < 1 || raw.length > max) throw new ProtocolError(406, `${kind} must be 1 to ${max} octets`);
  if (!isUtf8(raw)) throw new ProtocolError(406, `${kind} is not valid UTF-8`);
  const tokens = strictUtf8.decode(raw).split(".");
  tokens.forEach((token, i) => {
    if (token === "") throw new ProtocolError(406, `empty token in ${kind}`);
    if (kind === "pattern" && token === "*") return;
    if (kind === "pattern" && token === ">") {
      if (i !== tokens.length - 1) throw new ProtocolError(406, "'>' may only be the last token");
      return;
    }
    for (const ch of token) {
      const cp = ch.codePointAt(0);
      if (ch === "*" || ch === ">" || forbidden(cp)) {
        throw new ProtocolError(406, `character U+${cp.toString(16).padStart(4, "0")} not allowed in a ${kind}`);
      }
    }
  });
}

// ---- client messages ----

function header(command) {
  return Uint8Array.of(0x5a, 0x42, 0x01, command);
}

function checkChannel(channel) {
  if (channel.length !== 16) throw new ProtocolError(400, "channel must be 16 octets");
}

function checkRef(ref, min = 0, max = MAX_REF, what = "ref") {
  if (ref.length < min || ref.length > max) throw new ProtocolError(400, `${what} must be ${min} to ${max} octets`);
}

export function encodeHello(channel, body) {
  checkChannel(channel);
  checkHelloBody(body);
  return [header(CMD.HELLO), channel, bytes(body)];
}

export function encodeSubscribe(channel, ref, sid, pattern, queue = "") {
  checkChannel(channel);
  checkRef(ref);
  if (sid.length !== 4) throw new ProtocolError(400, "sid must be 4 octets");
  checkName(pattern, "pattern");
  if (bytes(queue).length > 0) checkName(queue, "queue");
  return [header(CMD.SUBSCRIBE), channel, ref, sid, bytes(pattern), bytes(queue)];
}

export function encodeUnsubscribe(channel, ref, sids) {
  checkChannel(channel);
  checkRef(ref);
  if (sids.length === 0 || sids.length % 4) throw new ProtocolError(400, "sids must be a non-empty multiple of 4 octets");
  return [header(CMD.UNSUBSCRIBE), channel, ref, sids];
}

export function encodePublish(channel, ref, topic, body) {
  checkChannel(channel);
  checkRef(ref);
  checkName(topic, "topic");
  return [header(CMD.PUBLISH), channel, ref, bytes(topic), body];
}

export function encodeAck(channel, token, body) {
  checkChannel(channel);
  checkRef(token, 1, MAX_REF, "token");
  return [header(CMD.ACK), channel, token, body];
}

export function encodeDisconnect(channel, ref) {
  checkChannel(channel);
  checkRef(ref);
  return [header(CMD.DISCONNECT), channel, ref];
}

export function encodeRequest(channel, ref, topic, body) {
  checkChannel(channel);
  checkRef(ref, 1, MAX_REQUEST_REF);
  checkName(topic, "topic");
  return [header(CMD.REQUEST), channel, ref, bytes(topic), body];
}

export function encodeReply(channel, token, body) {
  checkChannel(channel);
  checkRef(token, MIN_REPLY_TOKEN, MAX_REF, "reply token");
  return [header(CMD.REPLY), channel, token, body];
}

/** BATCH on channel carrying messages (each the frames of a PUBLISH, ACK,
 * REQUEST or REPLY on that channel, as the encoders above build them) in
 * order. Only to a broker whose WELCOME offered "batch_commands". */
export function encodeBatch(channel, messages) {
  checkChannel(channel);
  if (messages.length === 0) throw new ProtocolError(400, "BATCH needs at least one entry");
  const parts = [];
  for (const frames of messages) {
    const h = frames[0];
    const n = h && h.length === 4 ? CLIENT_ENTRY_FRAMES.get(h[3]) : undefined;
    if (n === undefined || frames.length !== n + 2) throw new ProtocolError(400, "not a message a BATCH may hold");
    if (!Buffer.from(frames[1]).equals(Buffer.from(channel))) throw new ProtocolError(400, "entry on another channel");
    parts.push(Uint8Array.of(h[3]));
    for (const frame of frames.slice(2)) {
      const length = Buffer.alloc(4);
      length.writeUInt32BE(frame.length);
      parts.push(length, bytes(frame));
    }
  }
  return [header(CMD.BATCH), channel, new Uint8Array(Buffer.concat(parts))];
}

// ---- durable streams: client messages ----

/** True if data (octets or a string) is a stream or consumer name: 1 to 64 of
 * A-Z a-z 0-9 _ - (ASCII only). */
export function isStreamName(data) {
  return STREAM_NAME.test(Buffer.from(bytes(data)).toString("latin1"));
}

/** STREAM: ref (1 to 32 octets) and body, a STREAM body as encodeStreamBody
 * writes it (checked: a map with str keys, its op a str). */
export function encodeStream(channel, ref, body) {
  checkChannel(channel);
  checkRef(ref, 1);
  checkStreamBody(body);
  return [header(CMD.STREAM), channel, ref, body];
}

/** CONSUME: ref (1 to 32 octets), the sid to bind (4 octets) and body, a CONSUME
 * body as encodeStreamBody writes it ({stream, durable, filter, ...}). */
export function encodeConsume(channel, ref, sid, body) {
  checkChannel(channel);
  checkRef(ref, 1);
  if (sid.length !== 4) throw new ProtocolError(400, "sid must be 4 octets");
  checkStreamBody(body);
  return [header(CMD.CONSUME), channel, ref, sid, body];
}

/** STREAM_ACK of a STREAM_MSG's token. kind: ACK_KIND (1 to 4) or its 1-octet
 * frame; delay: null (the empty frame: for a NAK, the consumer's backoff), the
 * milliseconds before a NAKed message is delivered again, or its frame of 0 or 4
 * octets; text: why (NAK, TERM), a string or UTF-8 octets. */
export function encodeStreamAck(channel, token, kind, delay = null, text = "") {
  checkChannel(channel);
  checkRef(token, 1, MAX_REF, "token");
  // a number is clamped to an octet (0 when not an integer), then checked as the frame
  const octet = (n) => (Number.isInteger(n) ? Math.max(0, Math.min(n, 255)) : 0);
  const kindFrame = typeof kind === "number" ? Uint8Array.of(octet(kind)) : kind;
  if (kindFrame.length !== 1 || kindFrame[0] < ACK_KIND.ACK || kindFrame[0] > ACK_KIND.TERM) {
    throw new ProtocolError(400, "STREAM_ACK kind must be one octet, 01 to 04");
  }
  let delayFrame;
  if (delay === null || delay === undefined) {
    delayFrame = new Uint8Array(0);
  } else if (typeof delay === "number") {
    if (!Number.isInteger(delay) || delay < 0 || delay > 0xffffffff) {
      throw new ProtocolError(400, "STREAM_ACK delay must be 0 to 4294967295 ms");
    }
    delayFrame = new Uint8Array(4);
    new DataView(delayFrame.buffer).setUint32(0, delay);
  } else {
    delayFrame = delay;
  }
  if (delayFrame.length !== 0 && delayFrame.length !== 4) {
    throw new ProtocolError(400, "STREAM_ACK delay must be empty or 4 octets");
  }
  const textFrame = bytes(text);
  if (!isUtf8(textFrame)) throw new ProtocolError(400, "STREAM_ACK text must be UTF-8");
  return [header(CMD.STREAM_ACK), channel, token, kindFrame, delayFrame, textFrame];
}

// ---- bodies: writing ----

const encoder = new Encoder();

/** The Timestamp extension (type -1) in its shortest form; sec may be a number or BigInt. */
export function timestampExt({ sec, nsec }) {
  const s = BigInt(sec);
  const view = new DataView(new ArrayBuffer(12));
  if (nsec === 0 && s >= 0n && s < 1n << 32n) {
    view.setUint32(0, Number(s));
    return new ExtData(-1, new Uint8Array(view.buffer, 0, 4));
  }
  if (s >= 0n && s < 1n << 34n) {
    view.setBigUint64(0, (BigInt(nsec) << 34n) | s);
    return new ExtData(-1, new Uint8Array(view.buffer, 0, 8));
  }
  view.setUint32(0, nsec);
  view.setBigInt64(4, s);
  return new ExtData(-1, new Uint8Array(view.buffer));
}

export function now() {
  const ms = Date.now();
  const ns = process.hrtime.bigint() % 1000000n; // sub-millisecond digits, for uniqueness only
  return { sec: BigInt(Math.floor(ms / 1000)), nsec: (ms % 1000) * 1000000 + Number(ns) };
}

function checkTime({ sec, nsec }) {
  const s = BigInt(sec);
  if (!Number.isInteger(nsec) || nsec < 0 || nsec > 999999999 || s < MIN_SECONDS || s > MAX_SECONDS) {
    throw new ProtocolError(422, "timestamp out of range");
  }
}

// Headers (a Map or an object) as a plain object: @msgpack/msgpack writes
// objects as maps, in key order (a JavaScript object lists integer-like keys
// first; the order of a map's keys carries no meaning).
function headerMap(headers) {
  const entries = headers instanceof Map ? [...headers] : Object.entries(headers ?? {});
  for (const [k, v] of entries) {
    if (typeof k !== "string" || typeof v !== "string") throw new ProtocolError(422, "headers map str to str");
  }
  return Object.fromEntries(entries);
}

/** {"client": clientName} (no key for null), and with batchCommands
 * "batch_commands": true after it (asking for batches of commands), and with
 * streams "streams": true after those (asking for STORED). */
export function encodeHelloBody(clientName, { batchCommands = false, streams = false } = {}) {
  const map = clientName == null ? {} : { client: clientName };
  if (batchCommands) map.batch_commands = true;
  if (streams) map.streams = true;
  return encoder.encode(map);
}

// A value as @msgpack/msgpack writes it: a Map as a plain object, object keys
// whose value is undefined left out (an option not given), a BigInt as a number
// (the encoder writes a number that is an integer in the shortest int form).
function plain(value, depth = 0) {
  if (depth > 100) throw new ProtocolError(422, "value nested too deeply");
  if (typeof value === "bigint") {
    if (value < BigInt(Number.MIN_SAFE_INTEGER) || value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ProtocolError(422, "integer beyond 2^53 in a stream body");
    }
    return Number(value);
  }
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map((v) => plain(v, depth + 1));
  const entries = value instanceof Map ? [...value] : Object.entries(value);
  for (const [k] of entries) {
    if (typeof k !== "string") throw new ProtocolError(422, "map keys must be strings");
  }
  return Object.fromEntries(entries.filter(([, v]) => v !== undefined).map(([k, v]) => [k, plain(v, depth + 1)]));
}

/** The body of STREAM ({op, ...arguments}) or CONSUME ({stream, durable, ...}):
 * map, a plain object or Map with string keys, of strings, numbers, booleans,
 * null, arrays, maps and octets (bin). */
export function encodeStreamBody(map) {
  const body = encoder.encode(plain(map));
  checkStreamBody(body);
  return body;
}

/** [id, timestamp, headers, payload]; headers a Map or an object of strings. */
export function encodeMessageBody({ id, timestamp, headers, payload }) {
  if (id.length !== 16) throw new ProtocolError(422, "id must be 16 octets");
  checkTime(timestamp);
  return encoder.encode([id, timestampExt(timestamp), headerMap(headers), bytes(payload)]);
}

/** A message body and a fifth element: null, or the error text of a failed responder. */
export function encodeReplyBody({ id, timestamp, headers, payload, error = null }) {
  if (id.length !== 16) throw new ProtocolError(422, "id must be 16 octets");
  if (error !== null && typeof error !== "string") throw new ProtocolError(422, "error must be null or a string");
  checkTime(timestamp);
  return encoder.encode([id, timestampExt(timestamp), headerMap(headers), bytes(payload), error]);
}

export function encodeAckBody(delivered, dropped, errors = []) {
  return encoder.encode([delivered, dropped, errors]);
}

// ---- bodies: reading ----

function bad(detail) {
  return new ProtocolError(422, detail);
}

function readWhole(body) {
  try {
    return readMsgpack(body);
  } catch (err) {
    throw bad(`not one msgpack object: ${err.message}`);
  }
}

function text(node, what) {
  const value = node.t === "str" ? textOf(node) : null;
  if (value === null) throw bad(`${what} must be a UTF-8 str`);
  return value;
}

// Every str in the tree is valid UTF-8 (the general rule for text).
function allTextValid(node) {
  if (node.t === "str") return textOf(node) !== null;
  if (node.t === "array") return node.v.every(allTextValid);
  if (node.t === "map") return node.v.every(([k, v]) => allTextValid(k) && allTextValid(v));
  return true;
}

function strKeyedMap(node, what) {
  if (node.t !== "map" || !node.v.every(([k]) => k.t === "str") || !allTextValid(node)) {
    throw bad(`${what} must be a map with str keys`);
  }
  return node.v;
}

function readTimestamp(node) {
  if (node.t !== "ext" || node.type !== -1) throw bad("timestamp must be the Timestamp extension");
  const d = node.data;
  const view = new DataView(d.buffer, d.byteOffset, d.byteLength);
  let sec;
  let nsec;
  if (d.length === 4) {
    sec = BigInt(view.getUint32(0));
    nsec = 0;
  } else if (d.length === 8) {
    const v = view.getBigUint64(0);
    nsec = Number(v >> 34n);
    sec = v & ((1n << 34n) - 1n);
  } else if (d.length === 12) {
    nsec = view.getUint32(0);
    sec = view.getBigInt64(4);
  } else {
    throw bad("Timestamp extension of a wrong length");
  }
  if (nsec > 999999999 || sec < MIN_SECONDS || sec > MAX_SECONDS) throw bad("timestamp out of range");
  return { sec, nsec };
}

/** Decode a message body (or a reply body, isReply) into
 * {id, timestamp: {sec: BigInt, nsec}, headers: Map, payload, error}. */
export function decodeMessageBody(body, isReply = false) {
  const root = readWhole(body);
  if (root.t !== "array" || root.v.length < 4) throw bad("message body must be an array of at least 4");
  const [id, ts, headers, payload] = root.v;
  if (id.t !== "bin" || id.v.length !== 16) throw bad("id must be a bin of 16 octets");
  const timestamp = readTimestamp(ts);
  if (headers.t !== "map") throw bad("headers must be a map");
  const headerEntries = new Map();
  for (const [k, v] of headers.v) headerEntries.set(text(k, "header key"), text(v, "header value"));
  if (payload.t !== "bin") throw bad("payload must be a bin");
  let error = null;
  if (isReply && root.v.length >= 5) {
    const e = root.v[4];
    if (e.t === "str") error = text(e, "error");
    else if (e.t !== "nil") throw bad("error must be nil or a str");
  }
  return { id: id.v, timestamp, headers: headerEntries, payload: payload.v, error };
}

/** Decode an ACK body into {delivered, dropped (BigInt), errors: [string]}. */
export function decodeAckBody(body) {
  const root = readWhole(body);
  if (root.t !== "array" || root.v.length < 3) throw bad("ACK body must be an array of at least 3");
  const [delivered, dropped, errors] = root.v;
  for (const n of [delivered, dropped]) {
    if (n.t !== "int" || n.v < 0n) throw bad("ACK counts must be non-negative integers");
  }
  if (errors.t !== "array") throw bad("ACK errors must be an array");
  return { delivered: delivered.v, dropped: dropped.v, errors: errors.v.map((e) => text(e, "ACK error")) };
}

// HELLO and WELCOME: "heartbeat", when present, is a non-negative integer.
function checkHeartbeat(entries, what) {
  for (const [k, v] of entries) {
    if (textOf(k) === "heartbeat" && (v.t !== "int" || v.v < 0n)) {
      throw bad(`${what} heartbeat must be a non-negative integer`);
    }
  }
}

// HELLO and WELCOME: "batch" and "batch_commands", when present, are booleans.
function checkBatch(entries, what) {
  for (const [k, v] of entries) {
    const key = textOf(k);
    if ((key === "batch" || key === "batch_commands") && v.t !== "bool") {
      throw bad(`${what} ${key} must be a boolean`);
    }
  }
}

export function checkHelloBody(body) {
  const entries = strKeyedMap(readWhole(bytes(body)), "HELLO body");
  checkHeartbeat(entries, "HELLO");
  checkBatch(entries, "HELLO");
}

/** A STATS_REPLY body: any map with str keys. */
export function checkStatsBody(body) {
  strKeyedMap(readWhole(body), "STATS_REPLY body");
}

/** A node of the reader as a JavaScript value: nil null, bool, int a number (a
 * BigInt beyond 2^53), float a number, str a string, bin a Uint8Array, array an
 * Array, a map with str keys a plain object (other maps a Map), ext {type, data}. */
export function valueOf(node) {
  switch (node.t) {
    case "int":
      return node.v >= BigInt(Number.MIN_SAFE_INTEGER) && node.v <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(node.v)
        : node.v;
    case "str": {
      const value = textOf(node);
      if (value === null) throw bad("text must be valid UTF-8");
      return value;
    }
    case "array":
      return node.v.map(valueOf);
    case "map":
      if (node.v.every(([k]) => k.t === "str")) {
        return Object.fromEntries(node.v.map(([k, v]) => [valueOf(k), valueOf(v)]));
      }
      return new Map(node.v.map(([k, v]) => [valueOf(k), valueOf(v)]));
    case "ext":
      return { type: node.type, data: node.data };
    default: // nil, bool, float, bin
      return node.v;
  }
}

/** Decode a STREAM or CONSUME body: a map with str keys whose op, if any, is a
 * str (422 otherwise); as a plain object (see valueOf). */
export function decodeStreamBody(body) {
  const root = readWhole(bytes(body));
  const entries = strKeyedMap(root, "stream body");
  for (const [k, v] of entries) {
    if (textOf(k) === "op" && v.t !== "str") throw bad("stream body op must be a str");
  }
  return valueOf(root);
}

export function checkStreamBody(body) {
  decodeStreamBody(body);
}

/** Decode a STREAM_REPLY body: a map with str keys (422 otherwise), as a plain
 * object (see valueOf). */
export function decodeStreamReplyBody(body) {
  const root = readWhole(bytes(body));
  strKeyedMap(root, "STREAM_REPLY body");
  return valueOf(root);
}

/** Decode a WELCOME body: {maxMessageSize (BigInt), batchCommands (true if it
 * offers batches of commands), streams (true if it says STORED will come),
 * entries: [[key, node]]}. */
export function decodeWelcomeBody(body) {
  const entries = strKeyedMap(readWhole(body), "WELCOME body");
  checkHeartbeat(entries, "WELCOME");
  checkBatch(entries, "WELCOME");
  let maxMessageSize = null;
  let batchCommands = false; // a missing key means false
  let streams = false; // true only if present and true
  for (const [k, v] of entries) {
    if (textOf(k) === "max_message_size") {
      if (v.t !== "int" || v.v <= 0n) throw bad("max_message_size must be a positive integer");
      maxMessageSize = v.v;
    }
    if (textOf(k) === "batch_commands") batchCommands = v.v === true;
    if (textOf(k) === "streams") streams = v.t === "bool" && v.v === true;
  }
  if (maxMessageSize === null) throw bad("WELCOME without max_message_size");
  return { maxMessageSize, batchCommands, streams, entries };
}

// ---- broker messages ----

/** The deliver-entries of a DELIVER_BATCH entries frame, as [{sids, topic, body}]
 * (views into the frame). Each entry is
 *   sids-length(2) sids topic-length(2) topic body-length(4) body
 * with unsigned big-endian lengths. Throw 400 unless the frame is one or more
 * entries and nothing else, each with a non-empty topic and sids that are a
 * non-empty multiple of 4 octets. The topic rules are parseBroker's check. */
export function readDeliverEntries(frame) {
  if (frame.length === 0) throw new ProtocolError(400, "DELIVER_BATCH needs at least one entry");
  const entries = [];
  let pos = 0;
  const take = (n) => {
    if (n > frame.length - pos) throw new ProtocolError(400, "DELIVER_BATCH entry truncated");
    pos += n;
    return frame.subarray(pos - n, pos);
  };
  const length = (n) => take(n).reduce((value, octet) => value * 256 + octet, 0);
  while (pos < frame.length) {
    const sids = take(length(2));
    const topic = take(length(2));
    const body = take(length(4));
    if (topic.length === 0) throw new ProtocolError(400, "DELIVER_BATCH entry with an empty topic");
    if (sids.length === 0 || sids.length % 4) {
      throw new ProtocolError(400, "sids must be a non-empty multiple of 4 octets");
    }
    entries.push({ sids, topic, body });
  }
  return entries;
}

/** The command entries of a BATCH or BROKER_BATCH entries frame, as the
 * messages they stand for: [header, channel, ...frames] (frames are views into
 * the entries frame). Each entry is
 *   command(1) then, per frame of the command, frame-length(4) frame
 * with unsigned big-endian lengths; allowed maps the commands the batch may
 * hold to their number of frames (CLIENT_ENTRY_FRAMES, BROKER_ENTRY_FRAMES).
 * Throw 400 unless the frame is one or more entries and nothing else. The
 * frames are not checked here: each entry is checked as the message alone. */
export function readCommandEntries(frame, channel, allowed) {
  if (frame.length === 0) throw new ProtocolError(400, "a batch needs at least one entry");
  const messages = [];
  let pos = 0;
  const take = (n) => {
    if (n > frame.length - pos) throw new ProtocolError(400, "batch entry truncated");
    pos += n;
    return frame.subarray(pos - n, pos);
  };
  while (pos < frame.length) {
    const command = take(1)[0];
    const n = allowed.get(command);
    if (n === undefined) throw new ProtocolError(400, `command 0x${command.toString(16)} cannot be in this batch`);
    const message = [header(command), channel];
    for (let i = 0; i < n; i += 1) {
      const length = take(4).reduce((value, octet) => value * 256 + octet, 0);
      message.push(take(length));
    }
    messages.push(message);
  }
  return messages;
}

/** An unsigned 64-bit big-endian integer at offset: a number, or a BigInt beyond 2^53. */
function uint64(frame, offset) {
  const v = Buffer.from(frame).readBigUInt64BE(offset);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Check the frames of a broker message; throw ProtocolError with the code it is refused with. */
export function parseBroker(frames) {
  if (frames.length === 0) throw new ProtocolError(400, "empty message");
  const h = frames[0];
  if (h.length !== 4 || h[0] !== 0x5a || h[1] !== 0x42 || h[2] !== 0x01) {
    throw new ProtocolError(505, "not a zmqbus/1 header");
  }
  const command = h[3];
  const expected = BROKER_FRAMES.get(command);
  if (expected === undefined) throw new ProtocolError(405, `unknown command 0x${command.toString(16)}`);
  if (frames.length !== expected) throw new ProtocolError(400, `wrong frame count ${frames.length}`);
  const channel = frames[1];
  const mayBeEmpty = command === CMD.ERROR || command === CMD.STATS_REPLY;
  if (channel.length !== 16 && !(mayBeEmpty && channel.length === 0)) {
    throw new ProtocolError(400, "channel must be 16 octets");
  }
  const msg = { command, channel };
  switch (command) {
    case CMD.BROKER_HEARTBEAT:
    case CMD.BYE:
      break;
    case CMD.STATS_REPLY:
      checkRef(frames[2]);
      checkStatsBody(frames[3]);
      Object.assign(msg, { ref: frames[2], body: frames[3] });
      break;
    case CMD.DROPPED:
      // no pairs is fine: a DROPPED may tell only of throttled publishes
      if (frames[2].length % 8) throw new ProtocolError(400, "DROPPED needs (sid, count) pairs of 8 octets");
      if (frames[3].length !== 4) throw new ProtocolError(400, "DROPPED throttled must be 4 octets");
      msg.counts = frames[2];
      msg.throttled = Buffer.from(frames[3]).readUInt32BE(0);
      msg.dropped = [];
      for (let i = 0; i < frames[2].length; i += 8) {
        msg.dropped.push({ sid: frames[2].subarray(i, i + 4), count: Buffer.from(frames[2]).readUInt32BE(i + 4) });
      }
      break;
    case CMD.WELCOME: {
      msg.body = frames[2];
      const welcome = decodeWelcomeBody(frames[2]);
      msg.maxMessageSize = welcome.maxMessageSize;
      msg.batchCommands = welcome.batchCommands;
      msg.streams = welcome.streams;
      break;
    }
    case CMD.OK:
      checkRef(frames[2]);
      msg.ref = frames[2];
      break;
    case CMD.DELIVER:
    case CMD.ASK:
      checkRef(frames[2], command === CMD.ASK ? MIN_REPLY_TOKEN : 0, MAX_REF, "token");
      if (frames[5].length === 0 || frames[5].length % 4) {
        throw new ProtocolError(400, "sids must be a non-empty multiple of 4 octets");
      }
      checkName(frames[3], "topic");
      Object.assign(msg, { token: frames[2], topic: frames[3], body: frames[4], sids: frames[5] });
      break;
    case CMD.DELIVER_BATCH:
      // the framing of every entry first, then the topics (as the reference parser)
      msg.entries = frames[2];
      msg.deliveries = readDeliverEntries(frames[2]);
      for (const { topic } of msg.deliveries) checkName(topic, "topic");
      break;
    case CMD.BROKER_BATCH:
      // the envelope only: each entry is checked as the message alone
      msg.entries = frames[2];
      msg.messages = readCommandEntries(frames[2], channel, BROKER_ENTRY_FRAMES);
      break;
    case CMD.ROUTED:
      checkRef(frames[2], 1);
      if (frames[3].length !== 4) throw new ProtocolError(400, "count must be 4 octets");
      msg.ref = frames[2];
      msg.count = Buffer.from(frames[3]).readUInt32BE(0);
      break;
    case CMD.ACKED:
      checkRef(frames[2], 1);
      Object.assign(msg, { ref: frames[2], body: frames[3] });
      break;
    case CMD.ANSWER:
      checkRef(frames[2], 1, MAX_REQUEST_REF);
      Object.assign(msg, { ref: frames[2], body: frames[3] });
      break;
    case CMD.STREAM_REPLY:
      checkRef(frames[2], 1);
      msg.ref = frames[2];
      msg.body = frames[3];
      msg.result = decodeStreamReplyBody(frames[3]);
      break;
    case CMD.STORED:
      checkRef(frames[2], 1);
      if (!isStreamName(frames[3])) throw new ProtocolError(400, "STORED stream must be 1 to 64 of A-Z a-z 0-9 _ -");
      if (frames[4].length !== 8) throw new ProtocolError(400, "STORED sequence must be 8 octets");
      if (frames[5].length !== 1 || frames[5][0] > 1) throw new ProtocolError(400, "STORED flag must be 00 or 01");
      msg.ref = frames[2];
      msg.stream = Buffer.from(frames[3]).toString("latin1");
      msg.seq = uint64(frames[4], 0);
      msg.duplicate = frames[5][0] === 1;
      break;
    case CMD.STREAM_MSG:
      checkRef(frames[2], 1, MAX_REF, "token");
      if (frames[5].length !== 4) throw new ProtocolError(400, "STREAM_MSG names one sid of 4 octets");
      if (frames[6].length !== 12) throw new ProtocolError(400, "STREAM_MSG meta must be 12 octets");
      checkName(frames[3], "topic");
      Object.assign(msg, { token: frames[2], topic: frames[3], body: frames[4], sid: frames[5], meta: frames[6] });
      msg.seq = uint64(frames[6], 0);
      msg.deliveries = Buffer.from(frames[6]).readUInt32BE(8);
      break;
    default: // ERROR
      checkRef(frames[2]);
      if (frames[3].length !== 2) throw new ProtocolError(400, "code must be 2 octets");
      if (!isUtf8(frames[4])) throw new ProtocolError(400, "ERROR text must be UTF-8");
      if (frames[5].length !== 0 && frames[5].length !== 4) {
        throw new ProtocolError(400, "ERROR retry-after must be empty or 4 octets");
      }
      msg.ref = frames[2];
      msg.code = Buffer.from(frames[3]).readUInt16BE(0);
      msg.text = strictUtf8.decode(frames[4]);
      // milliseconds until the same request may pass (429, a rate limit), or null
      msg.retryAfter = frames[5].length ? Buffer.from(frames[5]).readUInt32BE(0) : null;
  }
  return msg;
}

/** The sids of a DELIVER or ASK, as 4-octet arrays. */
export function splitSids(sids) {
  const out = [];
  for (let i = 0; i < sids.length; i += 4) out.push(sids.subarray(i, i + 4));
  return out;
}
