#!/usr/bin/env node
// zb-sub: subscribe on a zmqbus channel and print each message as one JSON line.
// The same options, output and exit statuses as interop/c/zb-sub:
//
//   zb-sub.js --endpoint EP --channel UUID --pattern P [--pattern P2 ...] [--queue Q]
//             [--count N] [--stop-topic T] [--error TEXT] [--timeout MS] [--name NAME]
//             [--batch-commands] [--server-key KEY --key KEY]
//
// Prints "ready" to stderr once every SUBSCRIBE is confirmed, then one line per message:
//   {"topic", "headers", "payload" (hex), "id" (hex), "timestamp_ns" (string),
//    "sids" (hex), "confirmed"}
// and ACKs it ([n, 0, []], or [0, 0, [TEXT]] with --error TEXT). Exit status:
// 0 done, 1 failure, 2 usage, 4 --timeout (default 30000 ms) expired first, 5 the
// broker refused the handshake (--server-key and --key as for zb-pub.js).
// --batch-commands asks for batches of commands; if the WELCOME offers them, the
// ACKs of the messages handled on one turn of the event loop (the DELIVER entries
// of one BROKER_BATCH) leave as one BATCH. At the end it prints to stderr the line
// zb-pub.js prints with it.

import { CLIENT_NAME, TimeoutError } from "./lib/client.js";
import { KEY_OPTIONS, connectClient, count, fail, failureStatus, parseCommandLine, printBatchStats } from "./lib/cli.js";
import { hex, parseChannel } from "./lib/protocol.js";

const USAGE = `usage: zb-sub.js --endpoint EP --channel UUID --pattern P [--pattern P2 ...] [--queue Q]
                 [--count N] [--stop-topic T] [--error TEXT] [--timeout MS] [--name NAME]
                 [--batch-commands] [--server-key KEY --key KEY]`;

const args = parseCommandLine(
  {
    endpoint: { type: "string" },
    channel: { type: "string" },
    pattern: { type: "string", multiple: true },
    queue: { type: "string", default: "" },
    count: { type: "string", default: "0" },
    "stop-topic": { type: "string" },
    error: { type: "string" },
    timeout: { type: "string", default: "30000" },
    name: { type: "string", default: CLIENT_NAME },
    "batch-commands": { type: "boolean", default: false },
    ...KEY_OPTIONS,
  },
  USAGE,
);
if (!args.endpoint || !args.channel || !args.pattern) fail(2, USAGE);
let channel;
try {
  channel = parseChannel(args.channel);
} catch (err) {
  fail(2, `zb-sub.js: --channel: ${err.message}`);
}
const wanted = count("--count", args.count);
const deadline = Date.now() + count("--timeout", args.timeout);

function line(delivery) {
  const out = { topic: delivery.topic };
  const m = delivery.message;
  if (m) {
    out.headers = Object.fromEntries(m.headers);
    out.payload = hex(m.payload);
    out.id = hex(m.id);
    out.timestamp_ns = (m.timestamp.sec * 1000000000n + BigInt(m.timestamp.nsec)).toString();
  } else {
    out.undecodable = true;
  }
  out.sids = delivery.sids.map(hex);
  out.confirmed = delivery.token.length > 0;
  return JSON.stringify(out);
}

async function main() {
  const client = connectClient("zb-sub.js", args, { batchCommands: args["batch-commands"] });
  let status = 0;
  try {
    await client.hello(channel, args.name);
  } catch (err) {
    process.stderr.write(`zb-sub.js: join failed: ${err.message}\n`);
    client.close();
    return failureStatus(err);
  }
  try {
    for (const pattern of args.pattern) await client.subscribe(pattern, args.queue);
  } catch (err) {
    process.stderr.write(`zb-sub.js: ${err.message}\n`);
    await client.disconnect().catch(() => {});
    client.close();
    return 1;
  }
  const offered = client.batching;
  process.stderr.write("ready\n");

  for (let received = 0; wanted === 0 || received < wanted; received++) {
    let delivery;
    try {
      delivery = await client.nextDelivery(Math.max(0, deadline - Date.now()));
    } catch (err) {
      if (err instanceof TimeoutError) {
        process.stderr.write(`zb-sub.js: timed out after ${received} message(s)\n`);
        status = 4;
      } else {
        process.stderr.write(`zb-sub.js: receive failed: ${err.message}\n`);
        status = failureStatus(err);
      }
      break;
    }
    process.stdout.write(`${line(delivery)}\n`);
    if (!delivery.message) {
      await client.ack(delivery, 0, 0, [`subscriber could not decode message: ${delivery.bodyError.message}`]);
    } else if (args.error !== undefined) {
      await client.ack(delivery, 0, 0, [args.error]);
    } else {
      await client.ack(delivery, delivery.sids.filter((sid) => client.hasSid(sid)).length);
    }
    if (args["stop-topic"] !== undefined && delivery.topic === args["stop-topic"]) break;
  }
  try {
    await client.disconnect();
  } catch (err) {
    process.stderr.write(`zb-sub.js: disconnect failed: ${err.message}\n`);
    status ||= 1;
  }
  if (args["batch-commands"]) printBatchStats(client, offered);
  client.close();
  return status;
}

process.exitCode = await main();
