// Shared bits of zb-pub.js and zb-sub.js.

import { parseArgs } from "node:util";

/** Parse argv with node:util parseArgs; on bad usage print usage and exit 2. */
export function parseCommandLine(options, usage) {
  try {
    const { values, positionals } = parseArgs({ options, allowPositionals: true });
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
