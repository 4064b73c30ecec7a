// CURVE keys as the Python side takes them: 40 characters of Z85 text (what
// zmq.curve_keypair() and zeromq's curveKeyPair() give), or a zmq.auth
// certificate file (what `zmqbus keygen NAME` writes: NAME.key with the public
// key, NAME.key_secret with both, as ZPL lines public-key = "..." and
// secret-key = "...").
//
// zeromq.js has no counterpart of zmq_curve_public(), so the public key of a
// secret key is derived with node:crypto's X25519, the same curve CurveZMQ
// uses.

import { createPrivateKey, createPublicKey } from "node:crypto";
import { readFileSync } from "node:fs";

const Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
const Z85_VALUE = new Map([...Z85].map((ch, i) => [ch, i]));
export const KEY_TEXT = 40;
// A PKCS#8 X25519 private key is this prefix, then the 32 octets of the key.
const X25519_PKCS8 = Buffer.from("302e020100300506032b656e04220420", "hex");

/** Octets of Z85 text (a multiple of 5 characters), or null if it is not Z85. */
export function z85Decode(text) {
  if (text.length % 5) return null;
  const out = Buffer.alloc((text.length / 5) * 4);
  for (let i = 0; i < text.length; i += 5) {
    let value = 0;
    for (let j = i; j < i + 5; j++) {
      const digit = Z85_VALUE.get(text[j]);
      if (digit === undefined) return null;
      value = value * 85 + digit;
    }
    if (value > 0xffffffff) return null;
    out.writeUInt32BE(value, (i / 5) * 4);
  }
  return out;
}

/** Z85 text of octets (a multiple of 4). */
export function z85Encode(data) {
  const b = Buffer.from(data);
  let text = "";
  for (let i = 0; i < b.length; i += 4) {
    let value = b.readUInt32BE(i);
    const chars = [];
    for (let j = 0; j < 5; j++) {
      chars.unshift(Z85[value % 85]);
      value = Math.floor(value / 85);
    }
    text += chars.join("");
  }
  return text;
}

function isKey(text) {
  return text.length === KEY_TEXT && z85Decode(text) !== null;
}

/** The Z85 public key of a Z85 secret key. */
export function publicKeyOf(secretKey) {
  const der = Buffer.concat([X25519_PKCS8, z85Decode(secretKey)]);
  const spki = createPublicKey(createPrivateKey({ key: der, format: "der", type: "pkcs8" })).export({
    format: "der",
    type: "spki",
  });
  return z85Encode(spki.subarray(-32));
}

/** The value a ZPL line "NAME = VALUE" (quoted or bare) gives name, or null. */
function zplValue(text, name) {
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*([\w-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s#]*))/.exec(line);
    if (m && m[1] === name) return m[2] ?? m[3] ?? m[4];
  }
  return null;
}

function readCertificate(path) {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new Error(`no key file at ${path} (${err.code ?? err.message}), and not 40 characters of Z85`);
  }
}

/** A public key (the broker's): Z85 text, or the public-key of a certificate file. */
export function loadPublicKey(spec) {
  if (spec.length === KEY_TEXT) {
    if (!isKey(spec)) throw new Error(`${spec} is not valid Z85 text`);
    return spec;
  }
  const key = zplValue(readCertificate(spec), "public-key");
  if (key === null) throw new Error(`${spec} holds no public-key (not a zmq.auth certificate)`);
  if (!isKey(key)) throw new Error(`${spec} has a public-key that is not 40 characters of Z85`);
  return key;
}

/** {publicKey, secretKey} from a Z85 secret key (its public key derived),
 * "PUBLIC:SECRET" in Z85, or a secret certificate file (NAME.key_secret). */
export function loadKeyPair(spec) {
  let publicKey = null;
  let secretKey;
  if (spec.length === KEY_TEXT) {
    if (!isKey(spec)) throw new Error("the secret key is not valid Z85 text");
    secretKey = spec;
  } else if (spec.length === 2 * KEY_TEXT + 1 && spec[KEY_TEXT] === ":") {
    publicKey = spec.slice(0, KEY_TEXT);
    secretKey = spec.slice(KEY_TEXT + 1);
    if (!isKey(publicKey) || !isKey(secretKey)) {
      throw new Error("PUBLIC:SECRET must be two keys of 40 characters of Z85");
    }
  } else {
    const text = readCertificate(spec);
    secretKey = zplValue(text, "secret-key");
    publicKey = zplValue(text, "public-key");
    if (secretKey === null) throw new Error(`${spec} holds no secret-key (use NAME.key_secret)`);
    if (!isKey(secretKey) || (publicKey !== null && !isKey(publicKey))) {
      throw new Error(`${spec} has a key that is not 40 characters of Z85`);
    }
  }
  const derived = publicKeyOf(secretKey);
  // a pair that does not match would fail the handshake with no clue why
  if (publicKey !== null && publicKey !== derived) throw new Error("the public key is not the secret key's");
  return { publicKey: derived, secretKey };
}
