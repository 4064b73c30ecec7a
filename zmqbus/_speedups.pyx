# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twins of the hot paths of ``protocol``, ``_batching`` and the
client's receive path (issue #17).

Each function here gives what its pure-Python twin gives and raises what it
raises (same type, same text) for every input: the twin is the reference,
``tests/test_speedups.py`` feeds both the same random frames, and
``zmqbus._fastpath`` uses this module only when it is built, current and
``ZMQBUS_PURE_PYTHON`` is not set. Nothing here touches a socket.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from libc.string cimport memcpy

from zmqbus import protocol as _p

# Wire constants, read from the pure module so there is one source.
cdef Py_ssize_t SID_BYTES = _p.SID_BYTES
cdef Py_ssize_t MAX_ENTRY_SIDS_BYTES = _p.MAX_ENTRY_SIDS_BYTES
cdef unsigned char CMD_DELIVER = int(_p.Cmd.DELIVER)
cdef object H_DELIVER = _p.H_DELIVER
cdef object H_BROKER_BATCH = _p.H_BROKER_BATCH
cdef object H_DELIVER_BATCH = _p.H_DELIVER_BATCH
cdef object _bad_batch = _p._bad_batch
cdef object _pack_publish_entry = _p.pack_publish_entry
cdef object _pack_deliver_entry = _p.pack_deliver_entry

# The deliver entry's fixed part: command, the empty token's frame-length,
# and the three frame-lengths (topic, body, sids).
cdef Py_ssize_t DELIVER_OVERHEAD = 1 + 4 + 4 + 4 + 4


cdef inline unsigned int _u16(const unsigned char* at) noexcept nogil:
    return (<unsigned int>at[0] << 8) | at[1]


cdef inline unsigned int _u32(const unsigned char* at) noexcept nogil:
    return (
        (<unsigned int>at[0] << 24) | (<unsigned int>at[1] << 16)
        | (<unsigned int>at[2] << 8) | at[3]
    )


cdef inline void _put32(unsigned char* at, Py_ssize_t n) noexcept nogil:
    at[0] = (n >> 24) & 0xFF
    at[1] = (n >> 16) & 0xFF
    at[2] = (n >> 8) & 0xFF
    at[3] = n & 0xFF


from zmqbus._fastpath import PURE_TWINS


cdef list _publish_entries(bytes frame, bint whole):
    # The entries of a PUBLISH_BATCH frame as (topic, body), or (topic, body,
    # the whole entry) if ``whole``; the errors of unpack_publish_entries.
    cdef Py_ssize_t end = PyBytes_GET_SIZE(frame)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(frame)
    cdef const char* cbuf = <const char*>buf
    cdef Py_ssize_t i = 0, start, tlen, blen, t0, b0
    cdef list out = []
    if not end:
        raise _bad_batch("no entries")
    while i < end:
        start = i
        if i + 2 > end:
            raise _bad_batch("an entry is truncated")
        tlen = _u16(buf + i)
        i += 2
        t0 = i
        i += tlen
        if i + 4 > end:
            raise _bad_batch("an entry is truncated")
        blen = _u32(buf + i)
        i += 4
        b0 = i
        i += blen
        if i > end or not tlen:
            raise _bad_batch("an entry is truncated or has an empty topic")
        if whole:
            out.append((
                PyBytes_FromStringAndSize(cbuf + t0, tlen),
                PyBytes_FromStringAndSize(cbuf + b0, blen),
                PyBytes_FromStringAndSize(cbuf + start, i - start),
            ))
        else:
            out.append((
                PyBytes_FromStringAndSize(cbuf + t0, tlen),
                PyBytes_FromStringAndSize(cbuf + b0, blen),
            ))
    return out


def unpack_publish_entries(frame):
    """``protocol.unpack_publish_entries``, compiled (for bytes: anything else
    goes to the pure function, which says what it makes of it)."""
    if type(frame) is not bytes:
        return PURE_TWINS["unpack_publish_entries"](frame)
    return _publish_entries(frame, True)


cdef inline void _write_deliver(
    unsigned char* w, bytes topic, bytes body, bytes sids,
    Py_ssize_t tl, Py_ssize_t bl, Py_ssize_t sl,
) noexcept:
    w[0] = CMD_DELIVER
    w[1] = 0; w[2] = 0; w[3] = 0; w[4] = 0
    w += 5
    _put32(w, tl)
    memcpy(w + 4, PyBytes_AS_STRING(topic), tl)
    w += 4 + tl
    _put32(w, bl)
    memcpy(w + 4, PyBytes_AS_STRING(body), bl)
    w += 4 + bl
    _put32(w, sl)
    memcpy(w + 4, PyBytes_AS_STRING(sids), sl)


def pack_unconfirmed_deliver_entry(topic, body, sids):
    """``protocol.pack_unconfirmed_deliver_entry``, compiled (for bytes)."""
    if type(topic) is not bytes or type(body) is not bytes or type(sids) is not bytes:
        return PURE_TWINS["pack_unconfirmed_deliver_entry"](topic, body, sids)
    cdef Py_ssize_t tl = PyBytes_GET_SIZE(topic)
    cdef Py_ssize_t bl = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t sl = PyBytes_GET_SIZE(sids)
    if tl > 0xFFFFFFFF or bl > 0xFFFFFFFF or sl > 0xFFFFFFFF:
        raise _p._too_long(_p.FRAME_LENGTH, max(tl, bl, sl))
    cdef bytes entry = PyBytes_FromStringAndSize(NULL, DELIVER_OVERHEAD + tl + bl + sl)
    _write_deliver(<unsigned char*>PyBytes_AS_STRING(entry), topic, body, sids, tl, bl, sl)
    return entry


cdef bytes _join_delivers(list run, Py_ssize_t size):
    # A batch_commands run [size, (topic, body, sids)...] as one entries frame.
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t k, n = PyList_GET_SIZE(run)
    cdef Py_ssize_t tl, bl, sl
    cdef tuple item
    cdef bytes topic, body, sids
    for k in range(1, n):
        item = <tuple>run[k]
        topic = <bytes>item[0]
        body = <bytes>item[1]
        sids = <bytes>item[2]
        tl = PyBytes_GET_SIZE(topic)
        bl = PyBytes_GET_SIZE(body)
        sl = PyBytes_GET_SIZE(sids)
        _write_deliver(w, topic, body, sids, tl, bl, sl)
        w += DELIVER_OVERHEAD + tl + bl + sl
    return frame


cdef int _run_batch(object to, bytes chid, list run, list out) except -1:
    # _batching._run_batch: 1 if it made a BROKER_BATCH.
    to.msgs_out += PyList_GET_SIZE(run) - 1
    if to.batch_commands:
        out.append((to.ident, [H_BROKER_BATCH, chid, _join_delivers(run, run[0])]))
        return 1
    out.append((to.ident, [H_DELIVER_BATCH, chid, b"".join(run[1:])]))
    return 0


cdef Py_ssize_t batch_bytes = 0
cdef Py_ssize_t max_entries = 0


cpdef object pick_member(object group, object gone):
    """``_groups.pick_member``, compiled."""
    cdef list members = group.members
    cdef Py_ssize_t n = PyList_GET_SIZE(members)
    cdef Py_ssize_t start, best = -1, best_load = -1, k, i, load
    cdef bint any_gone = bool(gone)
    cdef object peer
    if n == 0:
        raise ZeroDivisionError("integer modulo by zero")  # as ``group.next % 0``
    start = group.next % n
    for k in range(n):
        i = (start + k) % n
        peer = (<tuple>members[i])[0]
        if any_gone and peer.ident in gone:
            continue
        load = len(peer.outstanding)
        if load == 0:
            best = i
            break
        if best_load < 0 or load < best_load:
            best = i
            best_load = load
    if best < 0:
        return None
    group.next = best + 1
    return members[best]


cdef object _with_groups(tuple plain, tuple groups, object gone):
    # Channel.destinations past its cache lookup: the plain targets less the
    # departing, and one member picked from each matching queue group.
    cdef dict dests
    cdef object picked, peer, ident
    if gone:
        plain = tuple([target for target in plain if target[0] not in gone])
    if not groups:
        return plain
    dests = dict(plain)
    for group in groups:
        picked = pick_member(group, gone)
        if picked is not None:
            peer = (<tuple>picked)[0]
            ident = peer.ident
            dests[ident] = dests.get(ident, b"") + (<tuple>picked)[1]
    return dests.items()


def configure_fan_out(Py_ssize_t broker_batch_bytes, Py_ssize_t most_entries):
    """Set ``fan_out``'s two limits: ``_batching`` passes its own in."""
    global batch_bytes, max_entries
    batch_bytes = broker_batch_bytes
    max_entries = most_entries


def fan_out(object channel, messages, dict peers, list out):
    """``_batching.fan_out``, compiled."""
    if not batch_bytes:
        raise RuntimeError("configure_fan_out was not called")
    cdef bytes chid = channel.id
    destinations = channel.destinations
    # Channel.destinations for a cached topic is read here directly: its plain
    # targets as cached, or those and a member of each queue group.
    cdef dict cache = channel.cache
    cdef object gone = channel.gone
    cdef object hit, dests
    cdef dict runs = {}
    cdef Py_ssize_t n = 0, made = 0, size
    cdef list run
    cdef bytes topic, body, sids
    cdef object to, publish_entry, entry, target, message
    for message in messages:
        topic = <bytes?>message[0]
        body = <bytes?>message[1]
        publish_entry = None
        hit = cache.get(topic)
        if hit is None:
            dests = destinations(topic)
        elif not hit[1] and not gone:
            dests = hit[0]
        else:
            dests = _with_groups(hit[0], hit[1], gone)
        for target, sids in dests:
            n += 1
            to = peers[target]
            if to.batch_commands:
                size = DELIVER_OVERHEAD + PyBytes_GET_SIZE(topic) + PyBytes_GET_SIZE(body) \
                    + PyBytes_GET_SIZE(sids)
                entry = (topic, body, sids)
            elif to.batch and PyBytes_GET_SIZE(sids) <= MAX_ENTRY_SIDS_BYTES:
                if publish_entry is None:
                    publish_entry = _pack_publish_entry(topic, body)
                entry = _pack_deliver_entry(sids, publish_entry)
                size = PyBytes_GET_SIZE(entry)
            else:
                run = runs.pop(target, None)
                if run is not None:
                    made += _run_batch(to, chid, run, out)
                out.append((target, [H_DELIVER, chid, b"", topic, body, sids]))
                to.msgs_out += 1
                continue
            run = runs.get(target)
            if run is None:
                runs[target] = [size, entry]
            elif <Py_ssize_t>run[0] + size > batch_bytes or PyList_GET_SIZE(run) > max_entries:
                made += _run_batch(to, chid, run, out)
                runs[target] = [size, entry]
            else:
                run[0] = <Py_ssize_t>run[0] + size
                run.append(entry)
    for target, run in runs.items():
        made += _run_batch(peers[target], chid, run, out)
    return n, made


def publish_batch_messages(frame, batch_size, Py_ssize_t max_size, valid_topics, check):
    """``_batching.publish_batch_messages``, compiled (for a bytes frame)."""
    if type(frame) is not bytes:
        return PURE_TWINS["publish_batch_messages"](frame, batch_size, max_size, valid_topics, check)
    cdef list out = _publish_entries(frame, False)
    cdef bytes topic, body
    cdef tuple message
    batch_size(PyList_GET_SIZE(out))
    for message in out:
        topic = <bytes>message[0]
        body = <bytes>message[1]
        if PyBytes_GET_SIZE(body) > max_size or topic not in valid_topics:
            check(topic, body)
    return out


# --- the client's receive path ---------------------------------------------------

cdef Py_ssize_t FW = 4  # a frame-length's octets
cdef Py_ssize_t AFTER_EMPTY = 1 + 2 * FW  # an entry's second frame, after an empty first
cdef dict _HEADERS = _p._HEADERS


cdef inline Py_ssize_t _len_at(const unsigned char* buf, Py_ssize_t end, Py_ssize_t at):
    # The frame-length at ``at``, or -1 if it runs past the end (struct.error there).
    if at + FW > end:
        return -1
    return _u32(buf + at)


def _unpack_entries(frame, channel, allowed, int hot):
    """``protocol._unpack_entries``, compiled (for a bytes frame)."""
    if type(frame) is not bytes:
        return PURE_TWINS["_unpack_entries"](frame, channel, allowed, hot)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(frame)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(frame)
    cdef const char* cbuf = <const char*>buf
    cdef list out = []
    cdef list msg
    cdef Py_ssize_t i = 0, j, k, m, ln, a0, a1, count, extra
    cdef int cmd
    cdef bint two
    cdef object n
    if not end:
        raise _bad_batch("no entries")
    two = hot in allowed and allowed[hot] == 3
    while i < end:
        cmd = buf[i]
        if cmd == hot:
            ln = _len_at(buf, end, i + 1)
            if ln < 0:
                raise _bad_batch("an entry is truncated")
            if ln == 0:
                ln = _len_at(buf, end, i + AFTER_EMPTY - FW)
                if ln < 0:
                    raise _bad_batch("an entry is truncated")
                j = i + AFTER_EMPTY + ln
                ln = _len_at(buf, end, j)
                if ln < 0:
                    raise _bad_batch("an entry is truncated")
                k = j + FW + ln
                if two:
                    if k > end:
                        raise _bad_batch("an entry is truncated")
                    out.append((
                        PyBytes_FromStringAndSize(cbuf + i + AFTER_EMPTY, j - i - AFTER_EMPTY),
                        PyBytes_FromStringAndSize(cbuf + j + FW, k - j - FW),
                    ))
                else:
                    ln = _len_at(buf, end, k)
                    if ln < 0:
                        raise _bad_batch("an entry is truncated")
                    m = k + FW + ln
                    if m > end:
                        raise _bad_batch("an entry is truncated")
                    out.append((
                        PyBytes_FromStringAndSize(cbuf + i + AFTER_EMPTY, j - i - AFTER_EMPTY),
                        PyBytes_FromStringAndSize(cbuf + j + FW, k - j - FW),
                        PyBytes_FromStringAndSize(cbuf + k + FW, m - k - FW),
                    ))
                    k = m
                i = k
                continue
        n = allowed.get(cmd)
        if n is None:
            raise _bad_batch(f"command 0x{cmd:02x} cannot be batched")
        count = n
        if count < 2:
            count = 2  # as the pure code: two frames at least
        msg = [_HEADERS[cmd], channel]
        i += 1
        for extra in range(count):
            ln = _len_at(buf, end, i)
            if ln < 0:
                raise _bad_batch("an entry is truncated")
            a0 = i + FW
            a1 = a0 + ln
            if a1 > end:
                raise _bad_batch("an entry is truncated")
            msg.append(PyBytes_FromStringAndSize(cbuf + a0, ln))
            i = a1
        out.append(msg)
    return out


from datetime import timezone as _timezone

from cpython.datetime cimport datetime_new, import_datetime

import_datetime()
cdef object _UTC = _timezone.utc
cdef unsigned long long _SEC34 = (1ULL << 34) - 1


cdef object _utc_datetime(long long sec, long us):
    # _EPOCH + timedelta(seconds=sec, microseconds=us), as msgpack's
    # Timestamp.to_datetime gives it, without the two Python calls:
    # days to a civil date (H. Hinnant's algorithm), for sec >= 0.
    cdef long long days = sec // 86400
    cdef long long rem = sec - days * 86400
    cdef long long z = days + 719468
    cdef long long era = z // 146097
    cdef long long doe = z - era * 146097
    cdef long long yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef long long y = yoe + era * 400
    cdef long long doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef long long mp = (5 * doy + 2) // 153
    cdef long long d = doy - (153 * mp + 2) // 5 + 1
    cdef long long mo = mp + 3 if mp < 10 else mp - 9
    if mo <= 2:
        y += 1
    return datetime_new(
        <int>y, <int>mo, <int>d, <int>(rem // 3600), <int>((rem // 60) % 60), <int>(rem % 60),
        <int>us, _UTC,
    )


def message_fields(body):
    """``protocol.message_fields``, compiled for pack_message's own layout
    ([bin 16, Timestamp ext 8, {}, bin], nothing after); anything else goes
    to the pure function."""
    if type(body) is not bytes:
        return PURE_TWINS["message_fields"](body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef const char* cb = <const char*>b
    cdef Py_ssize_t start, ln
    cdef unsigned long long data
    cdef unsigned long long ns
    if (
        n < 32 or b[0] != 0x94 or b[1] != 0xC4 or b[2] != 0x10 or b[19] != 0xD7
        or b[20] != 0xFF or b[29] != 0x80
    ):
        return PURE_TWINS["message_fields"](body)
    if b[30] == 0xC4:
        ln = b[31]
        start = 32
    elif b[30] == 0xC5 and n >= 33:
        ln = _u16(b + 31)
        start = 33
    elif b[30] == 0xC6 and n >= 35:
        ln = _u32(b + 31)
        start = 35
    else:
        return PURE_TWINS["message_fields"](body)
    if start + ln != n:
        return PURE_TWINS["message_fields"](body)
    data = (<unsigned long long>_u32(b + 21) << 32) | _u32(b + 25)
    ns = data >> 34
    if ns > 999999999:
        return PURE_TWINS["message_fields"](body)  # which refuses it
    return (
        PyBytes_FromStringAndSize(cb + 3, 16),
        _utc_datetime(<long long>(data & _SEC34), <long>(ns // 1000)),
        {},
        PyBytes_FromStringAndSize(cb + start, ln),
    )


# --- the client's send path ------------------------------------------------------

from collections import deque as _deque

cdef object _H_BATCH = _p.H_BATCH
cdef dict _COMMAND_OF = _p._COMMAND_OF
cdef Py_ssize_t _MAX_BATCH_ENTRIES = _p.MAX_BATCH_ENTRIES
cdef object _BATCHABLE = None
cdef Py_ssize_t _BATCH_BYTES = 0


def configure_batch_front(batchable, Py_ssize_t batch_bytes):
    """Set the headers ``batch_front`` joins and its default limit: ``_client``
    passes its own in."""
    global _BATCHABLE, _BATCH_BYTES
    _BATCHABLE = batchable
    _BATCH_BYTES = batch_bytes


cdef Py_ssize_t _entry_size(list frames):
    # pack_command_entry's length for ``frames``, or -1 if they are not all
    # bytes (or one is too long): the pure function then says what it makes of them.
    cdef Py_ssize_t k, n = PyList_GET_SIZE(frames), size = 1, ln
    cdef object f
    if n < 4:
        return -1
    for k in range(2, n):
        f = frames[k]
        if type(f) is not bytes:
            return -1
        ln = PyBytes_GET_SIZE(f)
        if ln > 0xFFFFFFFF:
            return -1
        size += 4 + ln
    return size


def batch_front(out, limit=None):
    """``_client.batch_front``, compiled (for a deque of lists of bytes)."""
    if limit is None:
        limit = _BATCH_BYTES
    if type(out) is not _deque or _BATCHABLE is None or type(limit) is not int:
        return PURE_TWINS["batch_front"](out, limit)
    if len(out) < 2:
        return
    cdef Py_ssize_t cap = limit
    cdef Py_ssize_t count = 0, size = 0, one, k, n, ln
    cdef object frames
    cdef list fl
    for frames in out:
        if type(frames) is not list or not PyList_GET_SIZE(frames):
            return PURE_TWINS["batch_front"](out, limit)
        if (<list>frames)[0] not in _BATCHABLE:
            break
        one = _entry_size(<list>frames)
        if one < 0 or (<list>frames)[0] not in _COMMAND_OF:
            return PURE_TWINS["batch_front"](out, limit)
        size += one
        if size > cap or count == _MAX_BATCH_ENTRIES:
            size -= one
            break
        count += 1
    if count < 2:
        return
    cdef bytes joined = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(joined)
    cdef bytes part
    channel = (<list>out[0])[1]
    for k in range(count):
        fl = <list>out.popleft()
        w[0] = (<const unsigned char*>PyBytes_AS_STRING(<bytes>_COMMAND_OF[fl[0]]))[0]
        w += 1
        n = PyList_GET_SIZE(fl)
        for one in range(2, n):
            part = <bytes>fl[one]
            ln = PyBytes_GET_SIZE(part)
            _put32(w, ln)
            memcpy(w + 4, PyBytes_AS_STRING(part), ln)
            w += 4 + ln
    out.appendleft([_H_BATCH, channel, joined])


# The first instant past the 64-bit Timestamp form, as a Python int: it
# overflows a C long long.
cdef object _TS_END = (1 << 34) * 1_000_000_000


def pack_message(msg_id, ts_ns, headers, payload):
    """``protocol.pack_message``, compiled for its common case (16 bytes of
    id, no headers, a bytes payload, a timestamp of the 64-bit form); the
    rest goes to the pure function."""
    if (
        type(msg_id) is not bytes or PyBytes_GET_SIZE(msg_id) != 16 or type(payload) is not bytes
        or type(ts_ns) is not int or headers or not (0 < ts_ns < _TS_END)
    ):
        return PURE_TWINS["pack_message"](msg_id, ts_ns, headers, payload)
    cdef unsigned long long t = ts_ns
    cdef unsigned long long sec = t // 1000000000ULL
    cdef unsigned long long ns = t - sec * 1000000000ULL
    if not ns:
        return PURE_TWINS["pack_message"](msg_id, ts_ns, headers, payload)
    cdef Py_ssize_t ln = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t head
    if ln < 256:
        head = 2
    elif ln < 65536:
        head = 3
    elif ln <= 0xFFFFFFFF:
        head = 5
    else:
        return PURE_TWINS["pack_message"](msg_id, ts_ns, headers, payload)
    cdef bytes body = PyBytes_FromStringAndSize(NULL, 30 + head + ln)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(body)
    cdef unsigned long long data = (<unsigned long long>ns << 34) | <unsigned long long>sec
    w[0] = 0x94; w[1] = 0xC4; w[2] = 0x10
    memcpy(w + 3, PyBytes_AS_STRING(msg_id), 16)
    w[19] = 0xD7; w[20] = 0xFF
    _put32(w + 21, <Py_ssize_t>(data >> 32))
    _put32(w + 25, <Py_ssize_t>(data & 0xFFFFFFFF))
    w[29] = 0x80
    if head == 2:
        w[30] = 0xC4; w[31] = <unsigned char>ln
    elif head == 3:
        w[30] = 0xC5; w[31] = <unsigned char>(ln >> 8); w[32] = <unsigned char>(ln & 0xFF)
    else:
        w[30] = 0xC6
        _put32(w + 31, ln)
    memcpy(w + 30 + head, PyBytes_AS_STRING(payload), ln)
    return body


# --- the client's hand-over of deliveries ----------------------------------------

cdef object _ProtocolError = _p.ProtocolError
cdef object _object_new = object.__new__
cdef object _make_message = None
cdef object _Message = None
cdef bint _dict_writes = False
cdef object _bad_delivery = None
cdef object _bad_body = None


def configure_deliver_run(make_message, message_cls, bint dict_writes, bad_delivery, bad_body):
    """Set what ``deliver_run`` builds messages with and reports faults
    through: ``_client`` passes its own in."""
    global _make_message, _Message, _dict_writes, _bad_delivery, _bad_body
    _make_message = make_message
    _Message = message_cls
    _dict_writes = dict_writes
    _bad_delivery = bad_delivery
    _bad_body = bad_body


def deliver_run(run, topic_of, sinks_of, targets, counters):
    """``_client.deliver_run``, compiled (for a list of 3-tuples)."""
    cdef object entry
    if _Message is None or type(run) is not list:
        return PURE_TWINS["deliver_run"](run, topic_of, sinks_of, targets, counters)
    for entry in <list>run:
        if type(entry) is not tuple or len(<tuple>entry) != 3:
            return PURE_TWINS["deliver_run"](run, topic_of, sinks_of, targets, counters)
    counters["received"] += len(<list>run)
    cdef object topic, body, sids, sink, sinks, text, fields, msg, one
    cdef dict d
    for entry in <list>run:
        topic = (<tuple>entry)[0]
        body = (<tuple>entry)[1]
        sids = (<tuple>entry)[2]
        sink = None
        sinks = None
        try:
            text = topic_of(topic)
            if len(sids) == SID_BYTES:
                sink = sinks_of(sids)
                if sink is None:
                    continue
            else:
                sinks = targets(sids)
                if not sinks:
                    continue
        except _ProtocolError as exc:
            _bad_delivery(counters, exc)
            continue
        try:
            fields = message_fields(body)
        except _ProtocolError as exc:
            _bad_body(counters, text, exc)
            continue
        msg_id, ts, headers, payload = fields
        if _dict_writes:
            msg = _object_new(_Message)
            d = msg.__dict__
            if type(msg_id) is bytes:
                d["_raw_id"] = msg_id
            else:
                d["id"] = msg_id
            d["topic"] = text
            d["payload"] = payload
            d["headers"] = headers
            d["timestamp"] = ts
        else:
            msg = _make_message(msg_id, text, payload, headers, ts)
        if sink is not None:
            sink.offer(msg, None)
        elif sinks is not None:
            for one in sinks:
                one.offer(msg, None)
