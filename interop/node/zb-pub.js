#!/usr/bin/env node
// zb-pub: publish messages on a zmqbus channel.
// The same options, output and exit statuses as interop/c/zb-pub:
//
//   zb-pub.js --endpoint EP --channel UUID --topic T [--header K=V ...]
//             [--payload TEXT | --payload-hex HEX | --payload-stdin]
//             [--count N] [--confirm] [--timeout MS] [--name NAME] [--raw-garbage]
//
// With --confirm, prints one JSON line per message, the sum of its ACKEDs:
//   {"routed": N, "acked": N, "delivered": N, "dropped": N, "errors": [...]}
// ERRORs that refer to no pending call are printed as
//   {"error": CODE, "channel": HEX, "ref": HEX, "text": ...}
// --raw-garbage first sends the malformed messages of lib/garbage.js.
// Exit status: 0 done, 1 failure (timeout, refusal, stray ERROR outside
// --raw-garbage), 2 usage, 3 a confirmation reported handler errors.

import { readFileSync } from "node:fs";

import { CLIENT_NAME, Client } from "./lib/client.js";
import { count, fail, parseCommandLine } from "./lib/cli.js";
import { garbage } from "./lib/garbage.js";
import { fromHex, parseChannel } from "./lib/protocol.js";

const USAGE = `usage: zb-pub.js --endpoint EP --channel UUID --topic T [--header K=V ...]
                 [--payload TEXT | --payload-hex HEX | --payload-stdin]
                 [--count N] [--confirm] [--timeout MS] [--name NAME] [--raw-garbage]`;

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

async function main() {
  const client = new Client(args.endpoint);
  let status = 0;
  try {
    await client.hello(channel, args.name, timeoutMs);
  } catch (err) {
    process.stderr.write(`zb-pub.js: join failed: ${err.message}\n`);
    client.close();
    return 1;
  }
  try {
    if (args["raw-garbage"]) {
      for (const frames of garbage(client.channel, client.maxMessageSize)) await client.sendRaw(frames);
    }
    for (let i = 0; args.topic && i < times; i++) {
      const result = await client.publish(args.topic, headers, payload, { confirm: args.confirm, timeoutMs });
      if (result) {
        process.stdout.write(`${JSON.stringify(result)}\n`);
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
    process.stdout.write(`${JSON.stringify({ error: e.code, channel: e.channel, ref: e.ref, text: e.text })}\n`);
  }
  if (client.strayErrors.length && !args["raw-garbage"] && status === 0) status = 1;
  client.close();
  return status;
}

process.exitCode = await main();
