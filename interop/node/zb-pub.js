#!/usr/bin/env node
// zb-pub: publish messages on a zmqbus channel.
// The same options, output and exit statuses as interop/c/zb-pub, and, as the C
// client has no durable streams, --msg-id and the stream keys of a result line:
//
//   zb-pub.js --endpoint EP --channel UUID --topic T [--header K=V ...]
//             [--payload TEXT | --payload-hex HEX | --payload-stdin]
//             [--count N] [--confirm] [--timeout MS] [--name NAME] [--raw-garbage]
//             [--batch-commands] [--msg-id ID] [--server-key KEY --key KEY]
//
// With --confirm, prints one JSON line per message, the sum of its ACKEDs:
//   {"routed": N, "acked": N, "delivered": N, "dropped": N, "errors": [...]}
// and, for a message a durable stream stored (its STORED), after those
//   "stream": NAME, "seq": N, "duplicate": B
// (a duplicate was stored before, at seq, and is not routed again: routed 0).
// --msg-id ID gives every message that id (a stream stores it once): the 16
// octets of a UUID, or the first 16 octets of the SHA-256 of any other text
// (Python makes a uuid5 of such a text: only UUIDs deduplicate across languages).
// ERRORs that refer to no pending call are printed as
//   {"error": CODE, "channel": HEX, "ref": HEX, "text": ...}
// with "retry_after": MS last when the ERROR gives one.
// --raw-garbage first sends the malformed messages of lib/garbage.js.
// --batch-commands asks for batches of commands; if the WELCOME offers them, up
// to WINDOW messages are published at a time without waiting in between (one
// BATCH), and each window's confirmations printed in order once all are in. At
// the end it prints to stderr
//   {"batch_commands": B, "batches_in": N, "entries_in": N, "batches_out": N, "entries_out": N}
// --server-key KEY --key KEY connect over CURVE, as `zmqbus pub` does: the
// broker's public key (Z85 text or its NAME.key file) and this client's key (its
// NAME.key_secret file, a Z85 secret key, or PUBLIC:SECRET in Z85).
// Exit status: 0 done, 1 failure (timeout, refusal, stray ERROR outside
// --raw-garbage), 2 usage, 3 a confirmation reported handler errors, 5 the
// broker refused the handshake (its key, or none).

import { readFileSync } from "node:fs";

import { CLIENT_NAME } from "./lib/client.js";
import {
  KEY_OPTIONS,
  connectClient,
  count,
  fail,
  failureStatus,
  jsonLine,
  messageId,
  parseCommandLine,
  printBatchStats,
} from "./lib/cli.js";
import { garbage } from "./lib/garbage.js";
import { fromHex, parseChannel } from "./lib/protocol.js";

const USAGE = `usage: zb-pub.js --endpoint EP --channel UUID --topic T [--header K=V ...]
                 [--payload TEXT | --payload-hex HEX | --payload-stdin]
                 [--count N] [--confirm] [--timeout MS] [--name NAME] [--raw-garbage]
                 [--batch-commands] [--msg-id ID] [--server-key KEY --key KEY]`;
const WINDOW = 256; // messages published at a time with --batch-commands

const args = parseCommandLine(
  {
    endpoint: { type: "string" },
    channel: { type: "string" },
    topic: { type: "string" },
    header: { type: "string", multiple: true, default: [] },
    payload: { type: "string" },
    "payload-hex": { type: "string" },
    "payload-stdin": { type: "boolean", default: false },
    count: { type: "string", default: "1" },
    confirm: { type: "boolean", default: false },
    timeout: { type: "string", default: "5000" },
    name: { type: "string", default: CLIENT_NAME },
    "raw-garbage": { type: "boolean", default: false },
    "batch-commands": { type: "boolean", default: false },
    "msg-id": { type: "string" },
    ...KEY_OPTIONS,
  },
  USAGE,
);
const payloadOptions = [args.payload !== undefined, args["payload-hex"] !== undefined, args["payload-stdin"]];
if (!args.endpoint || !args.channel || (!args.topic && !args["raw-garbage"])) fail(2, USAGE);
if (payloadOptions.filter(Boolean).length > 1) fail(2, USAGE);

let channel;
let payload = new Uint8Array(0);
try {
  channel = parseChannel(args.channel);
  if (args.payload !== undefined) payload = Buffer.from(args.payload, "utf8");
  if (args["payload-hex"] !== undefined) payload = fromHex(args["payload-hex"]);
  if (args["payload-stdin"]) payload = readFileSync(0);
} catch (err) {
  fail(2, `zb-pub.js: ${err.message}`);
}
const headers = new Map();
for (const h of args.header) {
  const eq = h.indexOf("=");
  if (eq < 0) fail(2, "zb-pub.js: --header takes KEY=VALUE");
  headers.set(h.slice(0, eq), h.slice(eq + 1));
}
const times = count("--count", args.count);
const timeoutMs = count("--timeout", args.timeout);
const msgId = args["msg-id"] === undefined ? null : messageId(args["msg-id"]);
const options = { confirm: args.confirm, timeoutMs, msgId };

/** With batches of commands: publish WINDOW messages at a time without waiting in
 * between, and print each window's confirmations once all are in. */
async function publishWindows(client) {
  let status = 0;
  for (let left = times; args.topic && status === 0 && left > 0; left -= WINDOW) {
    const calls = [];
    for (let i = 0; i < Math.min(WINDOW, left); i++) {
      calls.push(client.publish(args.topic, headers, payload, options));
    }
    const settled = await Promise.allSettled(calls);
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) throw failed.reason;
    for (const { value: result } of settled) {
      if (result) {
        process.stdout.write(jsonLine(result));
        if (result.errors.length) status = 3;
      }
    }
  }
  return status;
}

async function main() {
  const client = connectClient("zb-pub.js", args, { batchCommands: args["batch-commands"] });
  let status = 0;
  try {
    await client.hello(channel, args.name, timeoutMs);
  } catch (err) {
    process.stderr.write(`zb-pub.js: join failed: ${err.message}\n`);
    client.close();
    return failureStatus(err);
  }
  const offered = client.batching;
  try {
    if (args["raw-garbage"]) {
      for (const frames of garbage(client.channel, client.maxMessageSize)) await client.sendRaw(frames);
    }
    if (offered) status = await publishWindows(client);
    for (let i = 0; !offered && args.topic && i < times; i++) {
      const result = await client.publish(args.topic, headers, payload, options);
      if (result) {
        process.stdout.write(jsonLine(result));
        if (result.errors.length) status = 3;
      }
    }
  } catch (err) {
    process.stderr.write(`zb-pub.js: publish failed: ${err.message}\n`);
    status = 1;
  }
  // the OK to DISCONNECT comes after every reply to what was sent before
  try {
    await client.disconnect(timeoutMs);
  } catch (err) {
    process.stderr.write(`zb-pub.js: disconnect failed: ${err.message}\n`);
    status = 1;
  }
  for (const e of client.strayErrors) {
    const line = { error: e.code, channel: e.channel, ref: e.ref, text: e.text };
    if (e.retryAfter !== null) line.retry_after = e.retryAfter;
    process.stdout.write(`${JSON.stringify(line)}\n`);
  }
  if (client.strayErrors.length && !args["raw-garbage"] && status === 0) status = 1;
  if (args["batch-commands"]) printBatchStats(client, offered);
  client.close();
  return status;
}

process.exitCode = await main();
