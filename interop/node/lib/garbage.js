// Malformed messages for --raw-garbage: each one is answered with exactly one
// ERROR by a broker the sending peer has joined (the code in the comment).
// The same list, in the same order, as interop/c/zb-pub.c.

const enc = (text) => Buffer.from(text, "latin1");

export function garbage(channel, maxMessageSize) {
  const other = Buffer.from("ffeeddccbbaa99887766554433221100", "hex");
  const empty = Buffer.alloc(0);
  const body = Buffer.from("94c41001020304050607080910111213141516d6ff6553f10080c400", "hex");
  const sid = Buffer.from("00000001", "hex");
  return [
    [enc("XY\x01\x04"), channel, empty, enc("t"), body], // 505: foreign signature
    [enc("ZB\x02\x04"), channel, empty, enc("t"), body], // 505: version 2
    [enc("ZB\x01"), channel, empty], // 505: 3-octet header
    [empty, enc("ZB\x01\x04"), channel, empty, enc("t"), body], // 505: REQ-style delimiter
    [enc("ZB\x01\x7f"), channel, empty], // 405: unknown command
    [enc("ZB\x01\x83"), channel, enc("tk"), enc("t"), body, sid], // 405: DELIVER from a client
    [enc("ZB\x01\x04"), channel, empty, enc("t")], // 400: PUBLISH of 4 frames
    [enc("ZB\x01\x04"), channel.subarray(0, 15), empty, enc("t"), body], // 400: 15-octet channel
    [enc("ZB\x01\x04"), channel, Buffer.alloc(33), enc("t"), body], // 400: 33-octet ref
    [enc("ZB\x01\x04"), channel, enc("g10"), enc("orders.*"), body], // 406: publish to a pattern
    [enc("ZB\x01\x04"), other, empty, enc("t"), body], // 409: another channel
    [enc("ZB\x01\x02"), channel, enc("g12"), Buffer.from("000001", "hex"), enc("a"), empty], // 400: 3-octet sid
    [enc("ZB\x01\x02"), channel, enc("g13"), sid, enc("a.>.b"), empty], // 406: bad pattern
    [enc("ZB\x01\x01"), channel, Buffer.from([0xc1])], // 422: HELLO body not msgpack
    [enc("ZB\x01\x05"), channel, empty, Buffer.from("93010090", "hex")], // 400: ACK with empty token
    [enc("ZB\x01\x07"), channel, empty, enc("t"), body], // 400: REQUEST with empty ref
    [enc("ZB\x01\x04"), channel, enc("g17"), enc("t"), Buffer.alloc(Number(maxMessageSize) + 1)], // 413
    [enc("ZB\x01\x03"), channel, enc("g18"), Buffer.from("000001", "hex")], // 400: sids of 3 octets
    [enc("ZB\x01\x01"), other, Buffer.from([0x80])], // 409: HELLO on another channel
  ];
}
