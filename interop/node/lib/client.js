// A zmqbus/1 client: one DEALER connection joined to one channel.
//
//   const client = new Client("tcp://127.0.0.1:9090");
//   await client.hello(parseChannel(uuid));
//   await client.subscribe("orders.>");
//   const confirmation = await client.publish("orders.eu", {k: "v"}, payload, {confirm: true});
//   const delivery = await client.nextDelivery(5000);
//   await client.ack(delivery, 1, 0, []);
//   await client.disconnect();
//   client.close();
//
// Durable streams (see docs/protocol.md, "Durable streams"): every HELLO asks
// for "streams" (new Client(endpoint, {streams: false}) does not), so a confirmed
// publish a stream captures resolves with {stream, seq, duplicate} besides the
// counts (from the STORED that comes before its ROUTED); publish(..., {msgId})
// gives the message its id (16 octets), which the stream deduplicates on.
//
//   const info = await client.addStream("ORDERS", ["orders.>"]);
//   const r = await client.publish("orders.eu", {}, payload, {confirm: true}); // r.stream, r.seq
//   const bound = await client.consume("ORDERS", {durable: "billing"}, (msg) => {
//     use(msg.seq, msg.topic, msg.payload);
//     msg.ack(); // or msg.nak(delayMs, text), msg.inProgress(), msg.term(text)
//   });
//   await client.unsubscribe(bound.sid); // unbinds it (a durable keeps its place)
//
// client.stream(op, args) sends any STREAM request and resolves with the
// STREAM_REPLY map (addStream, streamInfo and consumerInfo wrap it); an ERROR
// rejects it with RefusedError (404 no such stream or consumer, 410 conflict,
// 422 bad arguments, 507 the broker's store failed).
//
// Batches of commands (off unless asked for): new Client(endpoint, {batchCommands:
// true}) puts "batch_commands": true in the HELLO. If the WELCOME offers them
// (client.batching, until DISCONNECT or BYE), ACKs and PUBLISHes are held instead
// of sent, and what is held leaves, in order, on the event loop's next turn
// (setImmediate), before any other message, or before a message is held that
// would take it past BATCH_BYTES of entries: two or more as one BATCH, one as the
// message alone (so a BATCH has at most BATCH_BYTES of entries, unless one entry
// is larger: that one leaves alone). So the ACKs of the DELIVER entries of one
// BROKER_BATCH, and publishes made without awaiting each other, leave as one
// BATCH. Otherwise nothing is held: every message is sent at once, exactly as
// without asking.
//
// CURVE: new Client(endpoint, {serverKey, publicKey, secretKey}) (each 40
// characters of Z85; see ./keys.js to read them from certificate files). A
// handshake the broker refuses (a key it does not know, no key where it needs
// one, a wrong server key) fails hello() and every waiting call at once with
// AuthenticationError, whose message begins "authentication refused by the
// broker at ENDPOINT".

import { randomBytes } from "node:crypto";
import zmq from "zeromq";

import {
  ACK_KIND,
  CMD,
  ProtocolError,
  bytes,
  decodeAckBody,
  decodeMessageBody,
  encodeAck,
  encodeAckBody,
  encodeBatch,
  encodeConsume,
  encodeDisconnect,
  encodeHello,
  encodeHelloBody,
  encodeMessageBody,
  encodePublish,
  encodeStream,
  encodeStreamAck,
  encodeStreamBody,
  encodeSubscribe,
  encodeUnsubscribe,
  hex,
  now,
  parseBroker,
  splitSids,
} from "./protocol.js";

export const CLIENT_NAME = "zmqbus-node/0.1.0";
/** The most octets of entries in one BATCH the client sends (as the C client). */
export const BATCH_BYTES = 64 * 1024;

/** The broker refused a call with ERROR; retryAfter: the milliseconds after
 * which the same call may pass (429: the user's rate limit), or null. */
export class RefusedError extends Error {
  constructor(what, code, text, retryAfter = null) {
    super(`${what} refused: ERROR ${code}: ${text}${retryAfter === null ? "" : ` (retry after ${retryAfter} ms)`}`);
    this.code = code;
    this.text = text;
    this.retryAfter = retryAfter;
  }
}

/** The broker refused the connection's handshake (CURVE, ZAP). */
export class AuthenticationError extends Error {
  constructor(endpoint, reason) {
    super(`authentication refused by the broker at ${endpoint}: ${reason}`);
    this.endpoint = endpoint;
    this.reason = reason;
  }
}

/** Words for a failed handshake event of zeromq's socket observer. */
function handshakeReason(event, curve) {
  if (event.type === "handshake:error:auth") {
    const status = event.error?.status;
    return status === 400
      ? "the broker refused this client's key (ZAP 400)"
      : `the broker's authentication failed (ZAP ${status})`;
  }
  if (event.type === "handshake:error:protocol" && event.error?.code === "ERR_ZMTP_MECHANISM_MISMATCH") {
    return curve
      ? "the broker does not use CURVE: give no server key or key"
      : "the broker requires CURVE: give its server key and a client key pair";
  }
  if (event.type === "handshake:error:protocol") return `the handshake failed (${event.error?.code})`;
  // the broker drops a handshake it cannot read: all the client sees is a lost
  // connection, so the likely cause is named
  const detail = event.error?.code ?? "no detail";
  return curve
    ? `the CURVE handshake failed (${detail}): is the server key the broker's public key?`
    : `the handshake failed (${detail}): does the broker require CURVE (a server key and a client key pair)?`;
}

export class TimeoutError extends Error {}

/** The broker ended the session (BYE). */
export class SessionEnded extends Error {}

function u64(n) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** One STREAM_MSG of a consumer, as consume()'s onMessage gets it: stream, seq,
 * deliveries (this one included), topic, payload (octets), headers (an object of
 * strings), id (16 octets), timestamp ({sec: BigInt, nsec}), sid, token. Settle
 * it once with ack(), nak(delayMs, text) or term(text); inProgress() (any number
 * of times before) restarts its ack wait. Each sends a STREAM_ACK and resolves
 * once it is sent; settling a settled message throws. */
export class StreamMessage {
  #client;

  constructor(client, stream, msg, message) {
    this.#client = client;
    this.stream = stream;
    this.seq = msg.seq;
    this.deliveries = msg.deliveries;
    this.topic = Buffer.from(msg.topic).toString("utf8");
    this.payload = message.payload;
    this.headers = Object.fromEntries(message.headers);
    this.id = message.id;
    this.timestamp = message.timestamp;
    this.sid = msg.sid;
    this.token = msg.token;
    this.settled = false;
  }

  /** Done with it: never delivered again. */
  ack() {
    return this.#settle(ACK_KIND.ACK, null, "");
  }

  /** Deliver it again after delayMs, or, with null, after the consumer's
   * backoff (at once without one); text says why (a handler's error). */
  nak(delayMs = null, text = "") {
    return this.#settle(ACK_KIND.NAK, delayMs, text);
  }

  /** Never deliver it again, and it is not done (text: why). */
  term(text = "") {
    return this.#settle(ACK_KIND.TERM, null, text);
  }

  /** Still working on it: its ack wait starts again. */
  inProgress() {
    if (this.settled) throw new Error(`stream message ${this.stream} #${this.seq} is already settled`);
    return this.#client.sendStreamAck(this.token, ACK_KIND.PROGRESS, null, "");
  }

  #settle(kind, delayMs, text) {
    if (this.settled) throw new Error(`stream message ${this.stream} #${this.seq} is already settled`);
    this.settled = true;
    return this.#client.sendStreamAck(this.token, kind, delayMs, text);
  }
}

/** The size of a PUBLISH, ACK, REQUEST or REPLY as a command entry. */
function entrySize(frames) {
  return frames.slice(2).reduce((size, frame) => size + 4 + frame.length, 1);
}

export class Client {
  constructor(
    endpoint,
    { batchCommands = false, streams = true, serverKey = null, publicKey = null, secretKey = null } = {},
  ) {
    const options = { linger: 2000 };
    this.curve = serverKey !== null || publicKey !== null || secretKey !== null;
    if (this.curve) {
      if (!serverKey || !publicKey || !secretKey) throw new Error("CURVE needs serverKey, publicKey and secretKey");
      if (!zmq.capability.curve) throw new Error("this zeromq build has no CURVE");
      // the server key makes the socket a CURVE client
      Object.assign(options, { curveServerKey: serverKey, curvePublicKey: publicKey, curveSecretKey: secretKey });
    }
    this.socket = new zmq.Dealer(options);
    this.endpoint = endpoint;
    this.authFailure = null; // AuthenticationError once the broker refused the handshake
    // Before connect, so that no event is missed: libzmq retries a refused
    // handshake for ever without a word, and the observer is where it shows.
    this.watching = this.#watchHandshake();
    this.socket.connect(endpoint);
    this.channel = null;
    this.joined = false;
    this.maxMessageSize = 0n;
    this.nextRef = 1n;
    this.nextSid = 1;
    this.sids = new Set(); // hex of the open sids
    this.pending = new Map(); // hex ref -> handler(msg) of the call waiting for it
    this.joining = null; // handler(msg) while waiting for WELCOME
    this.deliveries = []; // DELIVERs nobody waits for yet
    this.deliveryWaiter = null;
    this.strayErrors = []; // ERRORs that match no call
    this.sending = Promise.resolve();
    this.askBatchCommands = batchCommands; // put "batch_commands": true in the HELLO
    this.askStreams = streams; // put "streams": true in the HELLO
    this.streams = false; // the WELCOME said STORED will come
    this.consumers = new Map(); // hex sid -> {stream, onMessage} of the sids bound by CONSUME
    this.onLost = null; // called with the error when the session is lost (BYE, a refused handshake)
    this.batching = false; // the WELCOME offered batch_commands: hold ACKs and PUBLISHes
    this.held = []; // {frames, resolve, reject}, held for a BATCH, in order
    this.heldBytes = 0; // their size as entries
    this.flushSoon = null; // the setImmediate that sends them
    // BROKER_BATCHes received and BATCHes sent, with their entries
    this.batchStats = { batchesIn: 0, entriesIn: 0, batchesOut: 0, entriesOut: 0 };
    // unconfirmed publishes the broker dropped because this client's user was
    // over its rate limit, as DROPPED counted them
    this.throttled = 0;
    this.reading = this.#readLoop();
  }

  // ---- plumbing ----

  /** Send one message, after what is held; sends are queued so that they never overlap. */
  send(frames) {
    if (this.held.length) this.flush();
    return this.#transmit(frames);
  }

  #transmit(frames) {
    const sent = this.sending.then(() => this.socket.send(frames.map((f) => Buffer.from(f))));
    this.sending = sent.catch(() => {});
    return sent;
  }

  /** An ACK or PUBLISH: held for a BATCH when batching, else sent at once.
   * Resolves once it has been sent (alone or in a BATCH). */
  #hold(frames) {
    if (!this.batching) return this.send(frames);
    const size = entrySize(frames);
    // what is held always fits in one BATCH (or is one larger entry)
    if (this.held.length && this.heldBytes + size > BATCH_BYTES) this.flush();
    return new Promise((resolve, reject) => {
      this.held.push({ frames, resolve, reject });
      this.heldBytes += size;
      this.flushSoon ??= setImmediate(() => this.flush());
    });
  }

  /** Send what is held now: each run of two or more that fits in BATCH_BYTES of
   * entries as one BATCH, a run of one as the message alone (what #hold keeps
   * is one run). */
  flush() {
    if (this.flushSoon) clearImmediate(this.flushSoon);
    this.flushSoon = null;
    const held = this.held;
    this.held = [];
    this.heldBytes = 0;
    for (let i = 0; i < held.length; ) {
      let j = i + 1;
      let size = entrySize(held[i].frames);
      while (j < held.length && size + entrySize(held[j].frames) <= BATCH_BYTES) {
        size += entrySize(held[j].frames);
        j += 1;
      }
      const run = held.slice(i, j);
      let sent;
      if (run.length === 1) {
        sent = this.#transmit(run[0].frames);
      } else {
        try {
          sent = this.#transmit(encodeBatch(this.channel, run.map((h) => h.frames)));
          this.batchStats.batchesOut += 1;
          this.batchStats.entriesOut += run.length;
        } catch (err) {
          sent = Promise.reject(err);
        }
      }
      sent.then(
        () => run.forEach((h) => h.resolve()),
        (err) => run.forEach((h) => h.reject(err)),
      );
      i = j;
    }
  }

  async #watchHandshake() {
    try {
      for await (const event of this.socket.events) {
        if (!event.type.startsWith("handshake:error")) continue;
        this.#refused(new AuthenticationError(this.endpoint, handshakeReason(event, this.curve)));
        return;
      }
    } catch (err) {
      if (!this.socket.closed) console.error(`zbclient: handshake watch failed: ${err.message}`);
    }
  }

  /** The broker refused the handshake: fail what waits, and what comes. */
  #refused(err) {
    this.authFailure = err;
    // what waits to be sent never will be: closing must not wait on it
    this.socket.linger = 0;
    if (this.joining) this.joining({ command: "lost", err });
    this.#lose(err);
  }

  async #readLoop() {
    try {
      for await (const frames of this.socket) this.#dispatch(frames);
    } catch (err) {
      if (!this.socket.closed) console.error(`zbclient: receive failed: ${err.message}`);
    }
  }

  #dispatch(frames) {
    let msg;
    try {
      msg = parseBroker(frames);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      console.error(`zbclient: refused a broker message with code ${err.code}: ${err.detail}`);
      this.#refuseDelivery(frames, err);
      this.#refuseReply(frames, err);
      return;
    }
    if (msg.command === CMD.STREAM_MSG) {
      this.#streamMessage(msg);
      return;
    }
    if (msg.command === CMD.DELIVER) {
      this.#deliver(msg);
      return;
    }
    if (msg.command === CMD.DELIVER_BATCH) {
      // each entry is the DELIVER it stands for, unconfirmed (empty token)
      for (const { sids, topic, body } of msg.deliveries) {
        this.#deliver({ command: CMD.DELIVER, channel: msg.channel, token: new Uint8Array(0), topic, body, sids });
      }
      return;
    }
    if (msg.command === CMD.BROKER_BATCH) {
      // each entry is the message it stands for, handled in order as if it came alone
      this.batchStats.batchesIn += 1;
      this.batchStats.entriesIn += msg.messages.length;
      for (const message of msg.messages) this.#dispatch(message);
      return;
    }
    if (msg.command === CMD.BYE) {
      this.#lose(new SessionEnded("the broker ended the session (BYE)"));
      return;
    }
    if (msg.command === CMD.DROPPED) {
      for (const { sid, count } of msg.dropped) {
        console.error(`zbclient: the broker dropped ${count} message(s) for sid ${hex(sid)}`);
      }
      if (msg.throttled) {
        this.throttled += msg.throttled;
        console.error(
          `zbclient: the broker dropped ${msg.throttled} unconfirmed publish(es) of this client: its user is over its rate limit`,
        );
      }
      return;
    }
    if (msg.command === CMD.WELCOME || (msg.command === CMD.ERROR && msg.ref.length === 0 && this.joining)) {
      if (this.joining) this.joining(msg);
      return;
    }
    const waiting = msg.ref && this.pending.get(hex(msg.ref));
    if (waiting && [CMD.OK, CMD.ROUTED, CMD.ACKED, CMD.ERROR, CMD.STORED, CMD.STREAM_REPLY].includes(msg.command)) {
      waiting(msg);
      return;
    }
    if (msg.command === CMD.ERROR) {
      console.error(`zbclient: ERROR ${msg.code} (ref ${hex(msg.ref)}): ${msg.text}`);
      this.strayErrors.push({
        code: msg.code,
        channel: hex(msg.channel),
        ref: hex(msg.ref),
        text: msg.text,
        retryAfter: msg.retryAfter,
      });
    }
    // anything else is dropped: a late reply, an ASK, ANSWER or STATS_REPLY (this
    // client sends no REQUEST or STATS), a BROKER_HEARTBEAT (it asks for none)
  }

  /** Hand a STREAM_MSG to the consumer its sid is bound to. */
  #streamMessage(msg) {
    const consumer = this.consumers.get(hex(msg.sid));
    // unbound meanwhile: the broker delivers it again to the consumer's other
    // sids (or whoever binds it next) once it has the UNSUBSCRIBE
    if (!consumer) return;
    let message;
    try {
      message = decodeMessageBody(msg.body);
    } catch (err) {
      // it will never decode: TERM, not redelivered for ever
      const what = `stream message ${consumer.stream} #${msg.seq}`;
      console.error(`zbclient: ${what} cannot be decoded, terminated: ${err.message}`);
      this.sendStreamAck(msg.token, ACK_KIND.TERM, null, `undecodable: ${err.message}`).catch(() => {});
      return;
    }
    const delivered = new StreamMessage(this, consumer.stream, msg, message);
    // a handler that throws (or whose promise rejects) before settling NAKs it
    const failed = (err) => {
      const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      console.error(`zbclient: consumer of ${consumer.stream} failed on #${delivered.seq}: ${text}`);
      if (!delivered.settled) delivered.nak(null, text).catch(() => {});
    };
    try {
      const returned = consumer.onMessage(delivered);
      if (returned && typeof returned.then === "function") returned.then(undefined, failed);
    } catch (err) {
      failed(err);
    }
  }

  /** A STREAM_REPLY we refuse (a body that is not a map with str keys) fails the
   * STREAM or CONSUME waiting for it at once. */
  #refuseReply(frames, err) {
    const isReply = frames.length === 4 && frames[0].length === 4 && frames[0][3] === CMD.STREAM_REPLY;
    const waiting = isReply && frames[2].length > 0 && this.pending.get(hex(frames[2]));
    if (waiting) waiting({ command: "lost", err });
  }

  /** Hand a DELIVER to the call waiting for one, or queue it. */
  #deliver(msg) {
    if (this.deliveryWaiter) this.deliveryWaiter(msg);
    else this.deliveries.push(msg);
  }

  /** The session is over: fail every waiting call. */
  #lose(err) {
    this.joined = false;
    this.batching = false;
    for (const h of this.held.splice(0)) h.reject(err);
    this.heldBytes = 0;
    this.sids.clear();
    this.consumers.clear();
    for (const waiting of this.pending.values()) waiting({ command: "lost", err });
    if (this.deliveryWaiter) this.deliveryWaiter({ command: "lost", err });
    if (this.onLost) this.onLost(err);
  }

  /** ACK a DELIVER we refuse (bad topic or sids), when its token frame is usable. */
  #refuseDelivery(frames, err) {
    const isDeliver = frames.length === 6 && frames[0].length === 4 && frames[0][3] === CMD.DELIVER;
    const token = frames[2];
    if (!isDeliver || !this.joined || token.length < 1 || token.length > 32) return;
    const body = encodeAckBody(0, 0, [`subscriber refused delivery: code ${err.code}`]);
    this.#hold(encodeAck(this.channel, token, body)).catch(() => {});
  }

  #newRef() {
    return u64(this.nextRef++);
  }

  /** Send frames whose replies carry ref (held for a BATCH with hold), and wait
   * for them: onMessage(msg, done) is called with each reply until it calls
   * done(err, value). */
  #call(ref, frames, timeoutMs, what, onMessage, hold = false) {
    const key = hex(ref);
    return new Promise((resolve, reject) => {
      const finish = (err, value) => {
        clearTimeout(timer);
        this.pending.delete(key);
        if (err) reject(err);
        else resolve(value);
      };
      const timer = setTimeout(() => finish(new TimeoutError(`${what}: no reply within ${timeoutMs} ms`)), timeoutMs);
      this.pending.set(key, (msg) => {
        if (msg.command === "lost") finish(msg.err);
        else if (msg.command === CMD.ERROR) finish(new RefusedError(what, msg.code, msg.text, msg.retryAfter));
        else onMessage(msg, finish);
      });
      (hold ? this.#hold(frames) : this.send(frames)).catch((err) => finish(err));
    });
  }

  // ---- calls ----

  /** Join a channel (16 octets): HELLO, then wait for WELCOME. */
  async hello(channel, clientName = CLIENT_NAME, timeoutMs = 5000) {
    if (this.authFailure) throw this.authFailure;
    const body = encodeHelloBody(clientName, { batchCommands: this.askBatchCommands, streams: this.askStreams });
    const frames = encodeHello(channel, body);
    const welcome = await new Promise((resolve, reject) => {
      const finish = (err, msg) => {
        clearTimeout(timer);
        this.joining = null;
        if (err) reject(err);
        else resolve(msg);
      };
      const timer = setTimeout(() => finish(new TimeoutError(`HELLO: no WELCOME within ${timeoutMs} ms`)), timeoutMs);
      this.joining = (msg) => {
        if (msg.command === "lost") finish(msg.err);
        else if (msg.command === CMD.ERROR) finish(new RefusedError("HELLO", msg.code, msg.text, msg.retryAfter));
        else finish(null, msg);
      };
      this.send(frames).catch((err) => finish(err));
    });
    this.channel = channel;
    this.maxMessageSize = welcome.maxMessageSize;
    this.joined = true;
    // a WELCOME offers batches only when asked; check both all the same
    this.batching = this.askBatchCommands && welcome.batchCommands;
    this.streams = this.askStreams && welcome.streams;
  }

  /** Open a subscription (queue "" for a plain one); resolves with its sid once the broker holds it. */
  async subscribe(pattern, queue = "", timeoutMs = 5000) {
    if (!this.joined) throw new Error("not joined");
    const ref = this.#newRef();
    const sid = u32(this.nextSid++);
    const frames = encodeSubscribe(this.channel, ref, sid, pattern, queue);
    // the sid is ours at once: a DELIVER may name it before the OK arrives
    this.sids.add(hex(sid));
    try {
      await this.#call(ref, frames, timeoutMs, "SUBSCRIBE", (msg, done) => done(null, msg));
    } catch (err) {
      this.sids.delete(hex(sid));
      if (err instanceof TimeoutError) {
        // close the sid, so that a late OK leaves nothing open
        await this.send(encodeUnsubscribe(this.channel, new Uint8Array(0), sid)).catch(() => {});
      }
      throw err;
    }
    return sid;
  }

  /** Publish. Unconfirmed: resolves once sent, with null. Confirmed: resolves with
   * {routed, acked, delivered, dropped, errors}, the sum of the ACKEDs, and, when
   * a stream stored it (the STORED before ROUTED), {stream, seq, duplicate} after
   * those (a duplicate was stored before, at seq, and is not routed: routed 0).
   * msgId: the message id (16 octets; a new random one by default), which a
   * stream deduplicates on. When batching, the PUBLISH is held: publishes made
   * without awaiting each other leave as one BATCH. */
  async publish(topic, headers, payload, { confirm = false, timeoutMs = 5000, msgId = null } = {}) {
    if (!this.joined) throw new Error("not joined");
    const id = msgId === null ? randomBytes(16) : bytes(msgId);
    if (id.length !== 16) throw new Error("msgId must be 16 octets");
    const body = encodeMessageBody({ id, timestamp: now(), headers, payload: bytes(payload) });
    if (BigInt(body.length) > this.maxMessageSize) {
      throw new RefusedError("PUBLISH", 413, `message body of ${body.length} octets exceeds max_message_size`);
    }
    const ref = confirm ? this.#newRef() : new Uint8Array(0);
    const frames = encodePublish(this.channel, ref, topic, body);
    if (!confirm) {
      await this.#hold(frames);
      return null;
    }
    const result = { routed: null, acked: 0, delivered: 0, dropped: 0, errors: [] };
    return this.#call(ref, frames, timeoutMs, "PUBLISH", (msg, done) => {
      if (msg.command === CMD.STORED) {
        Object.assign(result, { stream: msg.stream, seq: msg.seq, duplicate: msg.duplicate });
      } else if (msg.command === CMD.ROUTED) {
        result.routed = msg.count;
      } else if (msg.command === CMD.ACKED) {
        result.acked += 1;
        try {
          const ack = decodeAckBody(msg.body);
          result.delivered += Number(ack.delivered);
          result.dropped += Number(ack.dropped);
          result.errors.push(...ack.errors);
        } catch {
          result.errors.push("publisher could not decode ACKED body");
        }
      }
      // ACKEDs may come before ROUTED: done once both are in
      if (result.routed !== null && result.acked >= result.routed) done(null, result);
    }, true);
  }

  /** The next DELIVER (each entry of a DELIVER_BATCH comes as one, with an empty token):
   * {token, topic, sids, body, message (decoded, or null), bodyError}. */
  nextDelivery(timeoutMs = 5000) {
    const wrap = (msg) => {
      const delivery = { token: msg.token, topic: Buffer.from(msg.topic).toString("utf8"), sids: splitSids(msg.sids) };
      try {
        delivery.message = decodeMessageBody(msg.body);
      } catch (err) {
        delivery.message = null;
        delivery.bodyError = err;
      }
      return delivery;
    };
    if (this.deliveries.length) return Promise.resolve(wrap(this.deliveries.shift()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.deliveryWaiter = null;
        reject(new TimeoutError(`no message within ${timeoutMs} ms`));
      }, timeoutMs);
      this.deliveryWaiter = (msg) => {
        clearTimeout(timer);
        this.deliveryWaiter = null;
        if (msg.command === "lost") reject(msg.err);
        else resolve(wrap(msg));
      };
    });
  }

  hasSid(sid) {
    return this.sids.has(hex(sid));
  }

  // ---- durable streams ----

  /** STREAM {op, ...args}: resolves with the STREAM_REPLY map (see the spec's
   * "Stream requests"), or rejects with RefusedError. */
  async stream(op, args = {}, timeoutMs = 5000) {
    if (!this.joined) throw new Error("not joined");
    const ref = this.#newRef();
    const body = { op, ...args };
    body.op = op;
    const frames = encodeStream(this.channel, ref, encodeStreamBody(body));
    return this.#call(ref, frames, timeoutMs, `STREAM ${op}`, (msg, done) => {
      if (msg.command === CMD.STREAM_REPLY) done(null, msg.result);
    });
  }

  /** Add a stream on the channel storing the messages on subjects (patterns);
   * config: its other options (retention, max_msgs, max_bytes, max_age,
   * max_msg_size, discard, storage, duplicate_window). Resolves with its info. */
  async addStream(name, subjects, config = {}, timeoutMs = 5000) {
    const reply = await this.stream("add", { config: { name, subjects, ...config } }, timeoutMs);
    return reply.stream;
  }

  /** The info map of the channel's stream name. */
  async streamInfo(name, timeoutMs = 5000) {
    return (await this.stream("info", { name }, timeoutMs)).stream;
  }

  /** The info map of the durable consumer of a stream. */
  async consumerInfo(stream, durable, timeoutMs = 5000) {
    return (await this.stream("consumer_info", { name: stream, consumer: durable }, timeoutMs)).consumer;
  }

  /** CONSUME: bind a new sid to a consumer of stream, config the rest of the
   * CONSUME body (durable, filter, deliver, start_seq, start_time, ack_wait,
   * max_deliver, backoff, dead_letter, max_ack_pending; without durable an
   * ephemeral one). Resolves, once bound, with the consumer's info map (the
   * STREAM_REPLY body) with sid added: the sid it is bound to, which
   * unsubscribe() unbinds. onMessage(msg) gets each STREAM_MSG as a
   * StreamMessage, which it settles; one that throws (or rejects) before
   * settling NAKs it with the error. */
  async consume(stream, config, onMessage, timeoutMs = 5000) {
    if (!this.joined) throw new Error("not joined");
    if (typeof onMessage !== "function") throw new TypeError("consume needs an onMessage function");
    const ref = this.#newRef();
    const sid = u32(this.nextSid++);
    const body = { stream, ...config };
    body.stream = stream;
    const frames = encodeConsume(this.channel, ref, sid, encodeStreamBody(body));
    // bound at once, as a subscription: a STREAM_MSG may follow the reply at once
    this.sids.add(hex(sid));
    this.consumers.set(hex(sid), { stream, onMessage });
    let info;
    try {
      info = await this.#call(ref, frames, timeoutMs, "CONSUME", (msg, done) => {
        if (msg.command === CMD.STREAM_REPLY) done(null, msg.result);
      });
    } catch (err) {
      this.sids.delete(hex(sid));
      this.consumers.delete(hex(sid));
      if (err instanceof TimeoutError) {
        // unbind the sid, so that a late reply leaves nothing bound
        await this.send(encodeUnsubscribe(this.channel, new Uint8Array(0), sid)).catch(() => {});
      }
      throw err;
    }
    return Object.assign(info, { sid });
  }

  /** UNSUBSCRIBE: close subscriptions and unbind consumers by sid (4 octets
   * each, one or several in one array), forgotten here at once; resolves on
   * the OK. */
  async unsubscribe(sids, timeoutMs = 5000) {
    if (!this.joined) throw new Error("not joined");
    for (let i = 0; i < sids.length; i += 4) {
      const key = hex(sids.subarray(i, i + 4));
      this.sids.delete(key);
      this.consumers.delete(key);
    }
    const ref = this.#newRef();
    await this.#call(ref, encodeUnsubscribe(this.channel, ref, sids), timeoutMs, "UNSUBSCRIBE", (msg, done) =>
      done(null, msg),
    );
  }

  /** Send a STREAM_ACK (StreamMessage's ack, nak, inProgress and term). */
  sendStreamAck(token, kind, delayMs = null, text = "") {
    if (!this.joined) return Promise.reject(new Error("not joined"));
    return this.send(encodeStreamAck(this.channel, token, kind, delayMs, text));
  }

  /** ACK a delivery; nothing is sent when its token is empty. When batching, the
   * ACK is held and this resolves at once (a failed send is logged): the ACKs of
   * deliveries handled on one turn of the event loop leave as one BATCH. */
  async ack(delivery, delivered, dropped = 0, errors = []) {
    if (delivery.token.length === 0) return;
    const frames = encodeAck(this.channel, delivery.token, encodeAckBody(delivered, dropped, errors));
    if (this.batching) {
      this.#hold(frames).catch((err) => console.error(`zbclient: ACK failed: ${err.message}`));
      return;
    }
    await this.send(frames);
  }

  /** DISCONNECT and wait for the OK: every message sent before is then processed. */
  async disconnect(timeoutMs = 5000) {
    if (!this.joined) return;
    const ref = this.#newRef();
    await this.#call(ref, encodeDisconnect(this.channel, ref), timeoutMs, "DISCONNECT", (msg, done) => done(null, msg));
    this.joined = false;
    this.batching = false; // a new session has none until its HELLO asks
    this.streams = false;
    this.sids.clear();
    this.consumers.clear();
  }

  /** Send any frames (for tests). */
  sendRaw(frames) {
    return this.send(frames);
  }

  close() {
    // what is still held is never sent (disconnect() sends it before its DISCONNECT)
    if (this.flushSoon) clearImmediate(this.flushSoon);
    this.flushSoon = null;
    for (const h of this.held.splice(0)) h.reject(new Error("client closed"));
    this.socket.close();
  }
}
