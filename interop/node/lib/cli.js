// Shared bits of zb-pub.js, zb-sub.js and zb-consume.js.

import { createHash } from "node:crypto";
import { parseArgs } from "node:util";

import { AuthenticationError, Client } from "./client.js";
import { loadKeyPair, loadPublicKey } from "./keys.js";

/** Exit status when the broker refuses the handshake (AuthenticationError): a
 * key it does not know, or none where it needs one. (3, the Python CLI's,
 * already means handler errors to zb-pub.) */
export const EXIT_REFUSED = 5;

/** The options --server-key and --key, for parseCommandLine. */
export const KEY_OPTIONS = { "server-key": { type: "string" }, key: { type: "string" } };

/** The arguments with each string option joined to its value ("--key=VALUE"):
 * parseArgs refuses a separate value that begins with "-" as ambiguous, and a
 * Z85 key begins with "-" once in 85 (getopt in the C programs takes it). */
function joinValues(args, options) {
  const out = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i].startsWith("--") ? args[i].slice(2) : null;
    if (name !== null && options[name]?.type === "string" && i + 1 < args.length) {
      out.push(`${args[i]}=${args[i + 1]}`);
      i += 1;
    } else {
      out.push(args[i]);
    }
  }
  return out;
}

/** Parse argv with node:util parseArgs; on bad usage print usage and exit 2. */
export function parseCommandLine(options, usage) {
  try {
    const args = joinValues(process.argv.slice(2), options);
    const { values, positionals } = parseArgs({ args, options, allowPositionals: true });
    if (positionals.length) throw new Error(`unexpected argument ${positionals[0]}`);
    return values;
  } catch (err) {
    fail(2, `${err.message}\n${usage}`);
  }
}

export function fail(status, text) {
  process.stderr.write(`${text}\n`);
  process.exit(status);
}

/** One line of compact JSON; a BigInt (a stream sequence beyond 2^53) as its digits in a string. */
export function jsonLine(value) {
  return `${JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v))}\n`;
}

/** The 16 octets of a --msg-id: those of a UUID (hex digits, hyphens optional,
 * in {} or after urn:uuid: as Python's uuid.UUID reads it), else the first 16
 * octets of the SHA-256 of the text's UTF-8 (not what Python makes of such a
 * text, a uuid5: only UUID ids deduplicate across languages). */
export function messageId(text) {
  if (text === "") fail(2, "--msg-id must not be empty");
  const digits = text.replace(/urn:/g, "").replace(/uuid:/g, "").replace(/^[{}]+|[{}]+$/g, "").replace(/-/g, "");
  if (/^[0-9a-fA-F]{32}$/.test(digits)) return Buffer.from(digits, "hex");
  return createHash("sha256").update(text, "utf8").digest().subarray(0, 16);
}

export function count(option, text) {
  if (!/^\d+$/.test(text)) fail(2, `${option}: not a non-negative integer: ${text}`);
  return Number(text);
}

/** The stderr line of --batch-commands, byte for byte what the C programs print:
 * whether the WELCOME offered batches of commands, the BROKER_BATCHes received
 * and the BATCHes sent, with their entries. */
export function printBatchStats(client, offered) {
  const s = client.batchStats;
  process.stderr.write(
    `${JSON.stringify({
      batch_commands: offered,
      batches_in: s.batchesIn,
      entries_in: s.entriesIn,
      batches_out: s.batchesOut,
      entries_out: s.entriesOut,
    })}\n`,
  );
}

/** A Client of args.endpoint; over CURVE with --server-key (Z85 text or the
 * broker's NAME.key) and --key (NAME.key_secret, a Z85 secret key or
 * PUBLIC:SECRET). Exits 2 on a bad key or only one of the two. */
export function connectClient(prog, args, options = {}) {
  const serverKey = args["server-key"];
  const key = args.key;
  if ((serverKey === undefined) !== (key === undefined)) {
    fail(2, `${prog}: CURVE needs both --server-key (the broker's public key) and --key (this client's secret key)`);
  }
  if (serverKey !== undefined) {
    try {
      options.serverKey = loadPublicKey(serverKey);
    } catch (err) {
      fail(2, `${prog}: --server-key: ${err.message}`);
    }
    try {
      Object.assign(options, loadKeyPair(key));
    } catch (err) {
      fail(2, `${prog}: --key: ${err.message}`);
    }
  }
  try {
    return new Client(args.endpoint, options);
  } catch (err) {
    fail(1, `${prog}: ${err.message}`);
  }
}

/** The exit status of a failed call: EXIT_REFUSED when the broker refused the
 * handshake (also later: a user it no longer knows is refused on reconnecting). */
export function failureStatus(err) {
  return err instanceof AuthenticationError ? EXIT_REFUSED : 1;
}
