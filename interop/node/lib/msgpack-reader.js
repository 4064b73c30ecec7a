// A strict msgpack reader that keeps each value's msgpack type.
//
// readMsgpack(bytes) reads exactly one object filling the whole buffer and
// returns a tree of nodes {t, v}:
//   nil, bool (v: boolean), int (v: BigInt), float (v: number),
//   str (v: the raw octets; textOf(node) gives the string, or null if the
//   octets are not valid UTF-8), bin (v: Uint8Array), array (v: [node]),
//   map (v: [[keyNode, valueNode]]), ext (type: int, data: Uint8Array).
// It throws an Error on invalid or truncated input and on trailing octets.

const MAX_DEPTH = 100;
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

class Reader {
  constructor(data) {
    this.data = data;
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.data.length) throw new Error("truncated msgpack");
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8() {
    return this.view.getUint8(this.need(1));
  }

  u16() {
    return this.view.getUint16(this.need(2));
  }

  u32() {
    return this.view.getUint32(this.need(4));
  }

  take(n) {
    const at = this.need(n);
    return this.data.subarray(at, at + n);
  }
}

function readValue(r, depth) {
  if (depth > MAX_DEPTH) throw new Error("msgpack nested too deeply");
  const b = r.u8();
  if (b <= 0x7f) return { t: "int", v: BigInt(b) };
  if (b <= 0x8f) return readMap(r, b & 0x0f, depth);
  if (b <= 0x9f) return readArray(r, b & 0x0f, depth);
  if (b <= 0xbf) return { t: "str", v: r.take(b & 0x1f) };
  if (b >= 0xe0) return { t: "int", v: BigInt(b - 0x100) };
  switch (b) {
    case 0xc0:
      return { t: "nil", v: null };
    case 0xc2:
      return { t: "bool", v: false };
    case 0xc3:
      return { t: "bool", v: true };
    case 0xc4:
      return { t: "bin", v: r.take(r.u8()) };
    case 0xc5:
      return { t: "bin", v: r.take(r.u16()) };
    case 0xc6:
      return { t: "bin", v: r.take(r.u32()) };
    case 0xc7:
      return readExt(r, r.u8());
    case 0xc8:
      return readExt(r, r.u16());
    case 0xc9:
      return readExt(r, r.u32());
    case 0xca:
      return { t: "float", v: r.view.getFloat32(r.need(4)) };
    case 0xcb:
      return { t: "float", v: r.view.getFloat64(r.need(8)) };
    case 0xcc:
      return { t: "int", v: BigInt(r.u8()) };
    case 0xcd:
      return { t: "int", v: BigInt(r.u16()) };
    case 0xce:
      return { t: "int", v: BigInt(r.u32()) };
    case 0xcf:
      return { t: "int", v: r.view.getBigUint64(r.need(8)) };
    case 0xd0:
      return { t: "int", v: BigInt(r.view.getInt8(r.need(1))) };
    case 0xd1:
      return { t: "int", v: BigInt(r.view.getInt16(r.need(2))) };
    case 0xd2:
      return { t: "int", v: BigInt(r.view.getInt32(r.need(4))) };
    case 0xd3:
      return { t: "int", v: r.view.getBigInt64(r.need(8)) };
    case 0xd4:
      return readExt(r, 1);
    case 0xd5:
      return readExt(r, 2);
    case 0xd6:
      return readExt(r, 4);
    case 0xd7:
      return readExt(r, 8);
    case 0xd8:
      return readExt(r, 16);
    case 0xd9:
      return { t: "str", v: r.take(r.u8()) };
    case 0xda:
      return { t: "str", v: r.take(r.u16()) };
    case 0xdb:
      return { t: "str", v: r.take(r.u32()) };
    case 0xdc:
      return readArray(r, r.u16(), depth);
    case 0xdd:
      return readArray(r, r.u32(), depth);
    case 0xde:
      return readMap(r, r.u16(), depth);
    case 0xdf:
      return readMap(r, r.u32(), depth);
    default: // 0xc1 is never used
      throw new Error(`invalid msgpack byte 0x${b.toString(16)}`);
  }
}

function readExt(r, size) {
  const type = r.view.getInt8(r.need(1));
  return { t: "ext", type, data: r.take(size) };
}

function readArray(r, n, depth) {
  const items = [];
  for (let i = 0; i < n; i++) items.push(readValue(r, depth + 1));
  return { t: "array", v: items };
}

function readMap(r, n, depth) {
  const entries = [];
  for (let i = 0; i < n; i++) {
    const key = readValue(r, depth + 1);
    entries.push([key, readValue(r, depth + 1)]);
  }
  return { t: "map", v: entries };
}

export function readMsgpack(data) {
  const r = new Reader(data);
  const value = readValue(r, 0);
  if (r.pos !== data.length) throw new Error(`${data.length - r.pos} octet(s) after the msgpack object`);
  return value;
}

/** The text of a str node, or null if its octets are not valid UTF-8. */
export function textOf(node) {
  try {
    return strictUtf8.decode(node.v);
  } catch {
    return null;
  }
}
