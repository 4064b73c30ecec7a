#!/usr/bin/env node
// Check lib/protocol.js against tests/vectors/:  node test/vectors.js DIR
//
// valid.json:     client messages are produced byte for byte by the encoders
//                 from their fields and decoded body, and their bodies decode
//                 to the stated values; the broker-message parser refuses them
//                 with 405. Broker messages parse to the stated command and
//                 fields, and their bodies decode to the stated values; the
//                 entries of a DELIVER_BATCH read back as the stated sids,
//                 topics and bodies, and the bodies decode as message bodies.
//                 The entries of a BATCH or BROKER_BATCH read back as the
//                 stated messages, whose bodies decode to the stated values;
//                 each BATCH entry is produced byte for byte by its encoder
//                 and the BATCH by encodeBatch from them; each BROKER_BATCH
//                 entry parses alone (or is refused alone with the stated code).
//                 The stream commands likewise: STREAM, CONSUME and STREAM_ACK are
//                 produced byte for byte (STREAM_ACK also from its typed fields:
//                 kind, delay, text), STREAM_REPLY, STORED and STREAM_MSG parse to
//                 the stated fields (STORED: stream, seq, duplicate; STREAM_MSG:
//                 sid, meta and the delivery's seq and deliveries), and the stream
//                 bodies decode to the stated maps (compared by value).
// malformed.json: broker messages are refused with the stated code; client
//                 messages are refused by the matching encoder with the stated
//                 code where the encoder checks that rule (field sizes 400,
//                 text 406, HELLO body 422, BATCH entries 400, STREAM and CONSUME
//                 bodies 422, STREAM_ACK kind, delay and text 400).
// bodies.json:    valid bodies decode to the stated values and, when in the
//                 form this encoder writes, are re-encoded byte for byte;
//                 malformed bodies are refused with 422.
// Client messages of commands this client never sends (HEARTBEAT, STATS,
// PUBLISH_BATCH) are skipped and counted. (session.json holds refusals that
// depend on broker state, and exchanges.json what a broker sends: nothing for
// a client codec to check beyond the messages valid.json has.)
// Vectors of an optional feature this client does not implement are skipped
// and counted by feature; it implements the one there is ("streams": the
// durable-stream commands).
//
// Prints one line per failure and a summary; exit status 0 when all pass.

import { readFileSync } from "node:fs";
import { join } from "node:path";

import * as p from "../lib/protocol.js";

let checks = 0;
let failures = 0;
let skipped = 0;
let where = "";

// The optional features of the spec this client implements: the durable streams.
// A vector marked with another feature is skipped.
const FEATURES = new Set(["streams"]);
const unimplemented = new Map(); // feature -> vectors skipped

/** True (and counted) when the vector belongs to a feature this client lacks. */
function lacks(v) {
  if (v.feature === undefined || FEATURES.has(v.feature)) return false;
  unimplemented.set(v.feature, (unimplemented.get(v.feature) ?? 0) + 1);
  return true;
}

function check(ok, what) {
  checks += 1;
  if (!ok) {
    failures += 1;
    console.log(`FAIL ${where}: ${what}`);
  }
}

/** The code a call throws (0 if it returns). */
function codeOf(fn) {
  try {
    fn();
    return 0;
  } catch (err) {
    if (err instanceof p.ProtocolError) return err.code;
    throw err;
  }
}

const same = (a, b) => Buffer.from(a).equals(Buffer.from(b));
const utf8 = (text) => Buffer.from(text, "utf8");
const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

/** A decoded msgpack value (p.valueOf) equals a JSON value: numbers by value (a
 * float 0.0 is the JSON 0), maps as plain objects with the same keys. */
function sameValue(got, want) {
  if (want === null || typeof want !== "object") {
    if (typeof want === "number") return (typeof got === "number" || typeof got === "bigint") && Number(got) === want;
    return got === want;
  }
  if (Array.isArray(want)) {
    return Array.isArray(got) && got.length === want.length && want.every((w, i) => sameValue(got[i], w));
  }
  const isPlain = got !== null && typeof got === "object" && Object.getPrototypeOf(got) === Object.prototype;
  if (!isPlain) return false;
  const keys = Object.keys(want);
  return (
    Object.keys(got).length === keys.length && keys.every((k) => Object.hasOwn(got, k) && sameValue(got[k], want[k]))
  );
}

// timestamp_ns can exceed 2^53: read the files with those numbers kept as strings.
function load(dir, file) {
  const text = readFileSync(join(dir, file), "utf8").replace(/("timestamp_ns":\s*)(-?\d+)/g, '$1"$2"');
  return JSON.parse(text);
}

function timeOf(ns) {
  const n = BigInt(ns);
  let sec = n / 1000000000n;
  let nsec = n % 1000000000n;
  if (nsec < 0n) {
    sec -= 1n;
    nsec += 1000000000n;
  }
  return { sec, nsec: Number(nsec) };
}

// ---- bodies ----

function checkDecoded(type, body, want) {
  if (type === "message" || type === "reply") {
    let m;
    try {
      m = p.decodeMessageBody(body, type === "reply");
    } catch (err) {
      check(false, `${type} body refused: ${err.message}`);
      return;
    }
    const t = timeOf(want.timestamp_ns);
    check(p.hex(m.id) === want.id, "id differs");
    check(m.timestamp.sec === t.sec && m.timestamp.nsec === t.nsec, "timestamp differs");
    check(p.hex(m.payload) === want.payload, "payload differs");
    check(JSON.stringify([...m.headers].sort()) === JSON.stringify(Object.entries(want.headers).sort()), "headers differ");
    if (type === "reply") check(m.error === (want.error ?? null), "error differs");
  } else if (type === "ack") {
    let a;
    try {
      a = p.decodeAckBody(body);
    } catch (err) {
      check(false, `ack body refused: ${err.message}`);
      return;
    }
    check(a.delivered === BigInt(want.delivered) && a.dropped === BigInt(want.dropped), "counts differ");
    check(JSON.stringify(a.errors) === JSON.stringify(want.errors), "errors differ");
  } else if (type === "hello") {
    check(codeOf(() => p.checkHelloBody(body)) === 0, "hello body refused");
  } else if (type === "stats") {
    check(codeOf(() => p.checkStatsBody(body)) === 0, "stats body refused");
  } else if (type === "welcome") {
    try {
      const w = p.decodeWelcomeBody(body);
      check(w.maxMessageSize === BigInt(want.map.max_message_size), "max_message_size differs");
      check(w.batchCommands === (want.map.batch_commands === true), "batch_commands differs");
      check(w.streams === (want.map.streams === true), "streams differs");
    } catch (err) {
      check(false, `welcome body refused: ${err.message}`);
    }
  } else if (type === "stream" || type === "stream_reply") {
    try {
      const value = type === "stream" ? p.decodeStreamBody(body) : p.decodeStreamReplyBody(body);
      check(sameValue(value, want.map), `${type} map differs`);
    } catch (err) {
      check(false, `${type} body refused: ${err.message}`);
    }
  } else {
    check(false, `unknown body type ${type}`);
  }
}

/** Encode a decoded value; null when this encoder does not write such a body. */
function encodeBody(type, want) {
  const message = () => ({
    id: p.fromHex(want.id),
    timestamp: timeOf(want.timestamp_ns),
    headers: want.headers,
    payload: p.fromHex(want.payload),
  });
  if (type === "message") return p.encodeMessageBody(message());
  if (type === "reply") return p.encodeReplyBody({ ...message(), error: want.error ?? null });
  if (type === "ack") return p.encodeAckBody(want.delivered, want.dropped, want.errors);
  if (type === "hello") {
    const keys = Object.keys(want.map);
    if (keys.length === 0) return p.encodeHelloBody(null);
    if (keys.length === 1 && typeof want.map.client === "string") return p.encodeHelloBody(want.map.client);
    const { client, batch_commands: commands, streams } = want.map;
    if (keys.join() === "client,batch_commands" && typeof client === "string" && commands === true) {
      return p.encodeHelloBody(client, { batchCommands: true });
    }
    if (keys.join() === "client,streams" && typeof client === "string" && streams === true) {
      return p.encodeHelloBody(client, { streams: true });
    }
  }
  if (type === "stream") return p.encodeStreamBody(want.map);
  return null; // HELLO maps with other keys; WELCOME and STREAM_REPLY bodies are written by brokers
}

// ---- messages ----

const COMMANDS = {
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
  ...Object.fromEntries(Object.entries(p.CMD).filter(([, v]) => v >= 0x80)),
};

/** Encode a client message from frame-shaped fields; undefined when the frames
 * do not fit the encoder (an unknown command or a wrong frame count). */
function encodeFrames(command, f) {
  const counts = { 1: 3, 2: 6, 3: 4, 4: 5, 5: 4, 6: 3, 7: 5, 8: 4, 12: 3, 13: 4, 14: 5, 15: 6 };
  if (counts[command] !== f.length) return undefined;
  switch (command) {
    case p.CMD.HELLO:
      return p.encodeHello(f[1], f[2]);
    case p.CMD.SUBSCRIBE:
      return p.encodeSubscribe(f[1], f[2], f[3], f[4], f[5]);
    case p.CMD.UNSUBSCRIBE:
      return p.encodeUnsubscribe(f[1], f[2], f[3]);
    case p.CMD.PUBLISH:
      return p.encodePublish(f[1], f[2], f[3], f[4]);
    case p.CMD.ACK:
      return p.encodeAck(f[1], f[2], f[3]);
    case p.CMD.DISCONNECT:
      return p.encodeDisconnect(f[1], f[2]);
    case p.CMD.REQUEST:
      return p.encodeRequest(f[1], f[2], f[3], f[4]);
    case p.CMD.STREAM:
      return p.encodeStream(f[1], f[2], f[3]);
    case p.CMD.CONSUME:
      return p.encodeConsume(f[1], f[2], f[3], f[4]);
    case p.CMD.STREAM_ACK:
      return p.encodeStreamAck(f[1], f[2], f[3], f[4], f[5]);
    case p.CMD.BATCH:
      // each entry encoded alone by its encoder, then the BATCH from them
      return p.encodeBatch(
        f[1],
        p.readCommandEntries(f[2], f[1], p.CLIENT_ENTRY_FRAMES).map((m) => encodeFrames(m[0][3], m)),
      );
    default:
      return p.encodeReply(f[1], f[2], f[3]);
  }
}

function checkValidClient(v, frames) {
  const { fields, body } = v;
  check(codeOf(() => p.parseBroker(frames)) === 405, "the broker-message parser should refuse it with 405");
  if (body) {
    const given = frames[frames.length - 1];
    checkDecoded(body.type, given, body);
    const encoded = encodeBody(body.type, body);
    if (encoded) check(same(encoded, given), `encoded ${body.type} body differs from the vector`);
  }
  // the frames from the stated fields; the body frame as given
  const f = [...frames];
  f[1] = p.fromHex(fields.channel);
  if ("ref" in fields) f[2] = p.fromHex(fields.ref);
  if ("token" in fields) f[2] = p.fromHex(fields.token);
  if (v.command === "SUBSCRIBE") {
    f[3] = p.fromHex(fields.sid);
    f[4] = utf8(fields.pattern);
    f[5] = utf8(fields.queue);
  }
  if (v.command === "UNSUBSCRIBE") f[3] = p.fromHex(fields.sids);
  if (v.command === "CONSUME") f[3] = p.fromHex(fields.sid);
  if (v.command === "STREAM_ACK") {
    f[3] = Uint8Array.of(fields.kind);
    f[4] = fields.delay === null ? new Uint8Array(0) : u32(fields.delay);
    f[5] = utf8(fields.text);
    // and from the typed fields, as the client calls it
    try {
      const typed = p.encodeStreamAck(f[1], f[2], fields.kind, fields.delay, fields.text);
      const same6 = typed.length === frames.length && typed.every((e, i) => same(e, frames[i]));
      check(same6, "STREAM_ACK from typed fields differs");
    } catch (err) {
      check(false, `STREAM_ACK encoder refused the typed fields: ${err.message}`);
    }
  }
  if (v.command === "PUBLISH" || v.command === "REQUEST") f[3] = utf8(fields.topic);
  if (!(v.command in COMMANDS)) {
    skipped += 1; // a command this client does not send (HEARTBEAT, STATS, PUBLISH_BATCH)
    return;
  }
  let encoded;
  try {
    encoded = encodeFrames(COMMANDS[v.command], f);
  } catch (err) {
    check(false, `encoder refused: ${err.message}`);
    return;
  }
  check(encoded && encoded.length === frames.length && encoded.every((e, i) => same(e, frames[i])), "encoded frames differ");
  if (v.command === "BATCH") {
    checkCommandEntries(p.readCommandEntries(frames[2], frames[1], p.CLIENT_ENTRY_FRAMES), v.entries, "client");
  }
}

/** The entries of a BATCH or BROKER_BATCH (as the messages they stand for)
 * against the vector's list of {command, frames, body, code}: a client entry
 * is produced byte for byte by its encoder, a broker entry parses alone (or is
 * refused with the stated code); bodies decode to the stated values. */
function checkCommandEntries(messages, want, side) {
  check(Array.isArray(want) && messages.length === want.length, `${messages.length} entries, want ${want?.length}`);
  messages.forEach((m, i) => {
    const w = want?.[i] ?? {};
    const stated = (w.frames ?? []).map(p.fromHex);
    check(m[0][3] === COMMANDS[w.command], `entry ${i}: wrong command`);
    check(stated.length === m.length && stated.every((f, k) => same(f, m[k])), `entry ${i}: the message differs`);
    let code;
    if (side === "broker") {
      code = codeOf(() => p.parseBroker(m));
    } else {
      try {
        const encoded = encodeFrames(m[0][3], m);
        check(encoded.length === m.length && encoded.every((e, k) => same(e, m[k])), `entry ${i}: encoded frames differ`);
        code = 0;
      } catch (err) {
        if (!(err instanceof p.ProtocolError)) throw err;
        code = err.code;
      }
    }
    check(code === (w.code ?? 0), `entry ${i}: code ${code}, want ${w.code ?? 0}`);
    // the body: in DELIVER, ASK and STREAM_MSG frame 4, before the sids; otherwise the last frame
    const body = [p.CMD.DELIVER, p.CMD.ASK, p.CMD.STREAM_MSG].includes(m[0][3]) ? m[4] : m[m.length - 1];
    if (w.body) checkDecoded(w.body.type, body, w.body);
  });
}

function checkValidBroker(v, frames) {
  let m;
  try {
    m = p.parseBroker(frames);
  } catch (err) {
    check(false, `refused: ${err.message}`);
    return;
  }
  const { fields, body } = v;
  check(m.command === COMMANDS[v.command], "wrong command");
  check(p.hex(m.channel) === fields.channel, "channel differs");
  for (const key of ["ref", "token", "sids", "sid", "meta", "counts", "entries"]) {
    if (key in fields) check(p.hex(m[key]) === fields[key], `${key} differs`);
  }
  if ("topic" in fields) check(same(m.topic, utf8(fields.topic)), "topic differs");
  if ("text" in fields) check(m.text === fields.text, "text differs");
  if ("count" in fields) check(m.count === fields.count, "count differs");
  if ("code" in fields) check(m.code === fields.code, "code differs");
  if ("retry_after" in fields) check(m.retryAfter === fields.retry_after, "retry_after differs");
  if ("throttled" in fields) check(m.throttled === fields.throttled, "throttled differs");
  if ("stream" in fields) check(m.stream === fields.stream, "stream differs");
  if ("seq" in fields) check(m.seq === fields.seq, "seq differs");
  if ("duplicate" in fields) check(m.duplicate === fields.duplicate, "duplicate differs");
  if (v.delivery) {
    check(m.seq === v.delivery.seq && m.deliveries === v.delivery.deliveries, "delivery (seq, deliveries) differs");
  }
  if (body) checkDecoded(body.type, m.body, body);
  if (m.command === p.CMD.BROKER_BATCH) checkCommandEntries(m.messages, v.entries, "broker");
  else if (v.entries) checkDeliverEntries(m.deliveries, v.entries);
}

/** The entries of a DELIVER_BATCH against the vector's list of {sids, topic, body}. */
function checkDeliverEntries(entries, want) {
  check(entries.length === want.length, `${entries.length} entries, want ${want.length}`);
  entries.forEach((e, i) => {
    const w = want[i] ?? {};
    check(p.hex(e.sids) === w.sids, `entry ${i}: sids differ`);
    check(typeof w.topic === "string" && same(e.topic, utf8(w.topic)), `entry ${i}: topic differs`);
    check(p.hex(e.body) === w.body, `entry ${i}: body differs`);
    check(codeOf(() => p.decodeMessageBody(e.body)) === 0, `entry ${i}: message body refused`);
  });
}

function runValid(root) {
  for (const v of root.vectors) {
    if (lacks(v)) continue;
    where = `valid.json ${v.name}`;
    const frames = v.frames.map(p.fromHex);
    if (v.direction === "client") checkValidClient(v, frames);
    else checkValidBroker(v, frames);
  }
}

function runMalformed(root) {
  for (const v of root.vectors) {
    if (lacks(v)) continue;
    where = `malformed.json ${v.name}`;
    const frames = v.frames.map(p.fromHex);
    if (v.direction === "broker") {
      const code = codeOf(() => p.parseBroker(frames));
      check(code === v.code, `parsed with ${code}, want ${v.code}`);
    } else if ([400, 406, 422].includes(v.code) && frames.length && same(frames[0].subarray(0, 3), [0x5a, 0x42, 0x01])) {
      if (frames[0].length !== 4) continue;
      // the encoders take frames as they are; skip what their signature rules out
      const command = frames[0][3];
      let code;
      try {
        code = encodeFrames(command, frames) === undefined ? null : 0;
      } catch (err) {
        if (!(err instanceof p.ProtocolError)) throw err;
        code = err.code;
      }
      if (code !== null) check(code === v.code, `encoder gave ${code}, want ${v.code}`);
    }
  }
}

function runBodies(root) {
  for (const v of root.valid) {
    if (lacks(v)) continue;
    where = `bodies.json ${v.name}`;
    const body = p.fromHex(v.body);
    checkDecoded(v.type, body, v.decoded);
    // re-encode when the body has the shape this encoder writes
    const shape = { message: 0x94, reply: 0x95, ack: 0x93 }[v.type];
    if (body[0] === shape || v.type === "hello" || v.type === "stream") {
      const encoded = encodeBody(v.type, v.decoded);
      if (encoded) check(same(encoded, body), "re-encoded body differs");
    }
  }
  for (const v of root.malformed) {
    if (lacks(v)) continue;
    where = `bodies.json ${v.name}`;
    const body = p.fromHex(v.body);
    const decode = {
      message: () => p.decodeMessageBody(body),
      reply: () => p.decodeMessageBody(body, true),
      ack: () => p.decodeAckBody(body),
      hello: () => p.checkHelloBody(body),
      welcome: () => p.decodeWelcomeBody(body),
      stats: () => p.checkStatsBody(body),
      stream: () => p.decodeStreamBody(body),
      stream_reply: () => p.decodeStreamReplyBody(body),
    }[v.type];
    const code = codeOf(decode);
    check(code === 422, `decoded with ${code}, want 422`);
  }
}

const dir = process.argv[2];
if (!dir) {
  console.error("usage: node test/vectors.js DIR");
  process.exit(2);
}
runValid(load(dir, "valid.json"));
runMalformed(load(dir, "malformed.json"));
runBodies(load(dir, "bodies.json"));
const lacking = [...unimplemented].map(([feature, n]) => `${n} ${feature}`).join(", ") || "none";
console.log(
  `node vectors: ${checks} checks, ${failures} failures, ${skipped} client vectors skipped (commands not sent), ` +
    `vectors of features not implemented skipped: ${lacking}`,
);
process.exitCode = failures ? 1 : 0;
