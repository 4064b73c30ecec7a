#!/usr/bin/env node
// zb-consume: read a durable stream consumer on a zmqbus channel and print each
// message as one JSON line (Node only: the C client has no durable streams).
//
//   zb-consume.js --endpoint EP --channel UUID --stream NAME --durable NAME [--filter PAT]
//                 [--count N] [--timeout MS] [--nak-first] [--name NAME]
//                 [--server-key KEY --key KEY]
//
// Binds the durable consumer NAME of the stream (CONSUME; made if it does not
// exist, with --filter its filter), prints "ready" to stderr once bound, then
// one line per delivery (STREAM_MSG):
//   {"stream", "seq", "deliveries", "topic", "payload" (hex), "headers", "id" (hex)}
// and ACKs it (STREAM_ACK). With --nak-first it NAKs each message on its first
// delivery instead (deliveries 1: delivered again at once, or after the
// consumer's backoff) and ACKs it on a later one. It stops after ACKing --count
// messages (0, the default: never), then DISCONNECTs, so every ACK has reached
// the broker when it exits. Exit status: 0 done, 1 failure (the CONSUME refused:
// no such stream 404, another config 410, ...), 2 usage, 4 --timeout (default
// 30000 ms) expired first, 5 the broker refused the handshake (--server-key and
// --key as for zb-pub.js).

import { CLIENT_NAME } from "./lib/client.js";
import { KEY_OPTIONS, connectClient, count, fail, failureStatus, jsonLine, parseCommandLine } from "./lib/cli.js";
import { hex, isStreamName, parseChannel } from "./lib/protocol.js";

const USAGE = `usage: zb-consume.js --endpoint EP --channel UUID --stream NAME --durable NAME [--filter PAT]
                     [--count N] [--timeout MS] [--nak-first] [--name NAME]
                     [--server-key KEY --key KEY]`;

const args = parseCommandLine(
  {
    endpoint: { type: "string" },
    channel: { type: "string" },
    stream: { type: "string" },
    durable: { type: "string" },
    filter: { type: "string" },
    count: { type: "string", default: "0" },
    timeout: { type: "string", default: "30000" },
    "nak-first": { type: "boolean", default: false },
    name: { type: "string", default: CLIENT_NAME },
    ...KEY_OPTIONS,
  },
  USAGE,
);
if (!args.endpoint || !args.channel || !args.stream || !args.durable) fail(2, USAGE);
let channel;
try {
  channel = parseChannel(args.channel);
} catch (err) {
  fail(2, `zb-consume.js: --channel: ${err.message}`);
}
for (const option of ["stream", "durable"]) {
  if (!isStreamName(args[option])) fail(2, `zb-consume.js: --${option}: 1 to 64 of A-Z a-z 0-9 _ -: ${args[option]}`);
}
const wanted = count("--count", args.count);
const deadline = Date.now() + count("--timeout", args.timeout);

// Deliveries wait here for the loop below (they may come before "ready").
const inbox = [];
let wake = null;
let lost = null; // the error that ended the session

/** The next delivery; null once the deadline has passed; throws once the session is lost. */
function next() {
  if (inbox.length) return Promise.resolve(inbox.shift());
  if (lost) return Promise.reject(lost);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      wake = null;
      resolve(null);
    }, Math.max(0, deadline - Date.now()));
    wake = () => {
      clearTimeout(timer);
      wake = null;
      if (inbox.length) resolve(inbox.shift());
      else reject(lost);
    };
  });
}

function line(msg) {
  return jsonLine({
    stream: msg.stream,
    seq: msg.seq,
    deliveries: msg.deliveries,
    topic: msg.topic,
    payload: hex(msg.payload),
    headers: msg.headers,
    id: hex(msg.id),
  });
}

async function main() {
  const client = connectClient("zb-consume.js", args);
  client.onLost = (err) => {
    lost = err;
    if (wake) wake();
  };
  let status = 0;
  try {
    await client.hello(channel, args.name);
  } catch (err) {
    process.stderr.write(`zb-consume.js: join failed: ${err.message}\n`);
    client.close();
    return failureStatus(err);
  }
  const config = { durable: args.durable, filter: args.filter };
  try {
    await client.consume(args.stream, config, (msg) => {
      inbox.push(msg);
      if (wake) wake();
    });
  } catch (err) {
    process.stderr.write(`zb-consume.js: ${err.message}\n`);
    await client.disconnect().catch(() => {});
    client.close();
    return failureStatus(err);
  }
  process.stderr.write("ready\n");

  for (let acked = 0; wanted === 0 || acked < wanted; ) {
    let msg;
    try {
      msg = await next();
    } catch (err) {
      process.stderr.write(`zb-consume.js: receive failed: ${err.message}\n`);
      status = failureStatus(err);
      break;
    }
    if (msg === null) {
      process.stderr.write(`zb-consume.js: timed out after ${acked} message(s)\n`);
      status = 4;
      break;
    }
    process.stdout.write(line(msg));
    try {
      if (args["nak-first"] && msg.deliveries === 1) {
        await msg.nak(null, "zb-consume.js: --nak-first");
      } else {
        await msg.ack();
        acked += 1;
      }
    } catch (err) {
      process.stderr.write(`zb-consume.js: settling failed: ${err.message}\n`);
      status = failureStatus(err);
      break;
    }
  }
  // the OK to DISCONNECT comes after the broker has handled every STREAM_ACK
  try {
    await client.disconnect();
  } catch (err) {
    process.stderr.write(`zb-consume.js: disconnect failed: ${err.message}\n`);
    status ||= 1;
  }
  client.close();
  return status;
}

process.exitCode = await main();
