"""The sans-IO codec: every packet type round-trips; bad bytes raise ProtocolError only."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearnb.protocol.codec import LARGE, OVERSIZE, PacketHead
from gearnb.protocol import (
    ARG_COUNT, REQ, RES, AdminLine, Decoder, Packet, PacketType, ProtocolError, encode, request, response,
)

ALL_TYPES = sorted(ARG_COUNT)
arg_without_nul = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"x"))


@st.composite
def packets(draw):
    ptype = draw(st.sampled_from(ALL_TYPES))
    count = ARG_COUNT[ptype]
    args = [draw(arg_without_nul) for _ in range(max(count - 1, 0))]
    if count:
        args.append(draw(st.binary(max_size=200)))  # the last argument may hold NULs
    magic = draw(st.sampled_from([REQ, RES]))
    return Packet(magic, ptype, tuple(args))


def test_table_has_all_42_types():
    assert len(ARG_COUNT) == 42
    assert set(ARG_COUNT) == {t.value for t in PacketType}
    assert ARG_COUNT[PacketType.SUBMIT_REDUCE_JOB] == 5
    assert ARG_COUNT[PacketType.STATUS_RES_UNIQUE] == 6


def test_known_bytes():
    # The SUBMIT_JOB example of gearmand's PROTOCOL document.
    data = request(PacketType.SUBMIT_JOB, b"reverse", b"", b"test")
    assert data == b"\0REQ" + struct.pack(">II", 7, 13) + b"reverse\0\0test"
    assert response(PacketType.NOOP) == b"\0RES\x00\x00\x00\x06\x00\x00\x00\x00"


def test_last_argument_keeps_nuls():
    data = response(PacketType.WORK_COMPLETE, b"H:x:1", b"a\0b\0\0c")
    (packet,) = Decoder(RES).feed(data)
    assert packet.args == (b"H:x:1", b"a\0b\0\0c")


@settings(max_examples=300)
@given(packets())
def test_every_type_round_trips(packet):
    data = encode(packet.magic, packet.type, *packet.args)
    assert Decoder(packet.magic).feed(data) == [packet]


@settings(max_examples=100)
@given(st.lists(packets(), max_size=8), st.data())
def test_stream_split_anywhere(plist, data):
    magic = REQ
    stream = b"".join(encode(magic, p.type, *p.args) for p in plist)
    decoder = Decoder(magic)
    out = []
    pos = 0
    while pos < len(stream):
        step = data.draw(st.integers(1, 50))
        out += decoder.feed(stream[pos:pos + step])
        pos += step
    assert out == [Packet(magic, p.type, p.args) for p in plist]
    decoder.close()  # nothing left over


@settings(max_examples=500)
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_raise_only_protocol_error(data, allow_text):
    decoder = Decoder(REQ, allow_text=allow_text, max_packet_size=1024)
    try:
        decoder.feed(data)
        decoder.close()
    except ProtocolError:
        pass


@settings(max_examples=500)
@given(packets(), st.integers(0, 400), st.integers(0, 255))
def test_mutated_bytes_raise_only_protocol_error(packet, index, value):
    data = bytearray(encode(REQ, packet.type, *packet.args))
    data[index % len(data)] = value
    decoder = Decoder(REQ, allow_text=True, max_packet_size=4096)
    try:
        for item in decoder.feed(bytes(data)):
            assert isinstance(item, (Packet, AdminLine, PacketHead))
            if isinstance(item, PacketHead):  # a size field mutated past the limit: reported
                assert item.oversize and item.size > 4096
        decoder.close()
    except ProtocolError:
        pass


def test_wrong_magic():
    with pytest.raises(ProtocolError) as info:
        Decoder(REQ).feed(response(PacketType.NOOP))
    assert info.value.code == "INVALID_MAGIC"


def test_garbage_refused_before_a_whole_header():
    with pytest.raises(ProtocolError):
        Decoder(RES).feed(b"\0XY")


def test_unknown_type():
    with pytest.raises(ProtocolError):
        Decoder(REQ).feed(b"\0REQ" + struct.pack(">II", 99, 0))
    with pytest.raises(ProtocolError):
        Decoder(REQ).feed(b"\0REQ" + struct.pack(">II", 0, 0))


def test_oversize_reported_and_dropped_without_buffering():
    """A packet over the limit is not an error of the stream: its head (type, leading
    arguments, size) is handed out, its body read and dropped, and decoding carries on."""
    decoder = Decoder(REQ, max_packet_size=1000)
    assert decoder.feed(b"\0REQ" + struct.pack(">II", 16, 0xFFFFFFFF)) == [PacketHead(16, (), 0xFFFFFFFF, True)]
    assert decoder.buffered == 0
    decoder = Decoder(REQ, max_packet_size=1000, raw=True)
    body = b"fn\0uniq\0" + b"d" * 5000
    stream = request(PacketType.SUBMIT_JOB, b"fn", b"uniq", b"d" * 5000) + request(PacketType.ECHO_REQ, b"next")
    out = []
    for i in range(0, len(stream), 7):  # in small pieces: the head is known after the leading arguments
        out += decoder.feed(stream[i:i + 7])
        assert decoder.buffered <= 16
    assert out == [(OVERSIZE, PacketHead(PacketType.SUBMIT_JOB, (b"fn", b"uniq"), len(body), True)),
                   (PacketType.ECHO_REQ, (b"next",))]
    decoder.close()


def test_lazy_decoder_keeps_what_arrived_not_what_was_declared():
    """The job server's decoder hands out a large packet's head, and holds the bytes that came
    (not the declared size) until a quarter arrived or reserve() is called."""
    decoder = Decoder(REQ, lazy=True, raw=True)
    head = b"\0REQ" + struct.pack(">II", PacketType.SUBMIT_JOB, 128 << 20) + b"f\0u\0"
    assert decoder.feed(head + b"x" * 1000) == [(LARGE, PacketHead(PacketType.SUBMIT_JOB, (b"f", b"u"), 128 << 20))]
    assert decoder.buffered == 1000 + 2  # the leading arguments without their NULs, and the data
    target = decoder.get_buffer()
    assert len(target) < 1 << 20  # a chunk, not the packet's 128 MiB
    target[:5] = b"yyyyy"
    assert decoder.buffer_updated(5) == []
    decoder.reserve()  # the owner trusts the peer: the rest is read straight into place
    assert len(decoder.get_buffer()) == (128 << 20) - 4 - 1005


def test_too_few_arguments():
    with pytest.raises(ProtocolError):
        Decoder(REQ).feed(b"\0REQ" + struct.pack(">II", 7, 3) + b"abc")  # SUBMIT_JOB needs 3
    with pytest.raises(ProtocolError):
        Decoder(REQ).feed(b"\0REQ" + struct.pack(">II", 4, 1) + b"x")  # PRE_SLEEP has none


def test_truncated_at_close():
    decoder = Decoder(RES)
    assert decoder.feed(response(PacketType.JOB_CREATED, b"H:x:1")[:-2]) == []
    with pytest.raises(ProtocolError):
        decoder.close()


def test_admin_lines_share_the_port():
    decoder = Decoder(REQ, allow_text=True)
    items = decoder.feed(b"status\r\n" + request(PacketType.ECHO_REQ, b"x") + b"workers\nver")
    assert items == [AdminLine("status"), Packet(REQ, PacketType.ECHO_REQ, (b"x",)), AdminLine("workers")]
    assert decoder.feed(b"sion\r\n") == [AdminLine("version")]


def test_admin_line_length_bounded():
    decoder = Decoder(REQ, allow_text=True)
    with pytest.raises(ProtocolError):
        decoder.feed(b"x" * 100_000)


def test_text_refused_on_client_side():
    with pytest.raises(ProtocolError):
        Decoder(RES).feed(b"OK\n")


def test_encode_checks_arguments():
    with pytest.raises(ProtocolError):
        request(PacketType.SUBMIT_JOB, b"f", b"data")
    with pytest.raises(ProtocolError):
        request(PacketType.SUBMIT_JOB, b"f\0g", b"", b"data")
    with pytest.raises(ProtocolError):
        encode(REQ, 77)


def test_failed_decoder_stays_failed():
    decoder = Decoder(REQ)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\0BAD" + b"\0" * 8)
    with pytest.raises(ProtocolError):
        decoder.feed(request(PacketType.NOOP))


# -- large packets: received in pieces, joined once --------------------------------------------
BIG_TYPES = [PacketType.SUBMIT_JOB, PacketType.WORK_COMPLETE, PacketType.JOB_ASSIGN_UNIQ,
             PacketType.ECHO_REQ, PacketType.SUBMIT_REDUCE_JOB]


@pytest.fixture(params=["in-place", "joined"])
def big_packet_mode(request, monkeypatch):
    """Large packets are filled in place (CPython) or, where that is not possible, joined."""
    from gearnb import buffers

    if request.param == "joined":
        monkeypatch.setattr(buffers, "_bytes_maker", False)
    return request.param


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(BIG_TYPES), st.integers(0, 3 * 65536), st.data())
def test_large_packets_split_anywhere(big_packet_mode, ptype, size, data):
    from gearnb.protocol.codec import BIG_PACKET

    count = ARG_COUNT[ptype]
    leading = [data.draw(arg_without_nul) for _ in range(count - 1)]
    last = bytes(range(256)) * (size // 256 + 1)
    last = last[:size + BIG_PACKET // 2]  # NULs inside, as pickles have
    big = Packet(REQ, ptype, (*leading, last))
    small = Packet(REQ, PacketType.ECHO_REQ, (b"x",))
    stream = b"".join(encode(REQ, p.type, *p.args) for p in (small, big, small, big))
    decoder = Decoder(REQ)
    out = []
    pos = 0
    reused = bytearray(262144)  # as the worker reads: recv_into one buffer, feed a view of it
    while pos < len(stream):
        step = data.draw(st.sampled_from([1, 7, 12, 100, 4096, 65536, 262144]))
        piece = stream[pos:pos + step]
        if data.draw(st.booleans()):
            reused[:len(piece)] = piece
            out += decoder.feed(memoryview(reused)[:len(piece)])
            reused[:len(piece)] = b"\xff" * len(piece)  # the next read overwrites it
        else:
            out += decoder.feed(piece)
        pos += step
        assert decoder.buffered <= len(stream)
    assert out == [small, big, small, big]
    assert all(type(arg) is bytes for packet in out for arg in packet.args)
    decoder.close()


def test_large_packet_errors(big_packet_mode):
    from gearnb.protocol.codec import BIG_PACKET

    from gearnb.protocol.codec import MAX_LEADING

    body = b"x" * (2 * BIG_PACKET)  # SUBMIT_JOB needs two NULs; there are none
    data = b"\0REQ" + struct.pack(">II", PacketType.SUBMIT_JOB, len(body)) + body
    decoder = Decoder(REQ)
    assert decoder.feed(data[:MAX_LEADING]) == []
    assert decoder.buffered == MAX_LEADING - 12
    with pytest.raises(ProtocolError, match="leading arguments longer than"):
        decoder.feed(data[MAX_LEADING:BIG_PACKET])  # no function name is that long
    with pytest.raises(ProtocolError):
        decoder.feed(request(PacketType.NOOP))  # stays failed
    decoder = Decoder(RES)
    decoder.feed(response(PacketType.WORK_COMPLETE, b"H:x:1", body)[:-1])
    with pytest.raises(ProtocolError):
        decoder.close()  # cut off inside the large packet


def test_large_packet_encodes_as_small_ones_do():
    body = bytes(range(256)) * 1000
    assert request(PacketType.SUBMIT_JOB, b"f", b"u", body) == \
        b"\0REQ" + struct.pack(">II", 7, len(body) + 4) + b"f\0u\0" + body
    assert response(PacketType.WORK_COMPLETE, b"H:1", memoryview(body)) == \
        b"\0RES" + struct.pack(">II", 13, len(body) + 4) + b"H:1\0" + body


def test_large_packet_with_too_few_or_no_arguments(big_packet_mode):
    from gearnb.protocol.codec import BIG_PACKET

    for ptype, body in [(PacketType.WORK_COMPLETE, b"x" * BIG_PACKET * 2),  # no NUL after the handle
                        (PacketType.NOOP, b"\0" * BIG_PACKET * 2)]:  # NOOP carries no data
        data = b"\0RES" + struct.pack(">II", ptype, len(body)) + body
        decoder = Decoder(RES)
        with pytest.raises(ProtocolError):
            for i in range(0, len(data), 1000):
                decoder.feed(data[i:i + 1000])


def test_encode_parts_joins_to_encode():
    from gearnb.protocol.codec import BIG_PACKET, encode_parts

    big = bytes(range(256)) * (BIG_PACKET // 256 + 1)
    for ptype, args in [(PacketType.SUBMIT_JOB, (b"f", b"u", big)), (PacketType.SUBMIT_JOB, (b"f", b"u", b"x")),
                        (PacketType.ECHO_RES, (big,)), (PacketType.NOOP, ())]:
        parts = encode_parts(REQ, ptype, *args)
        assert b"".join(parts) == encode(REQ, ptype, *args)
        assert len(parts) == (2 if args and args[-1] is big else 1)
    with pytest.raises(ProtocolError):
        encode_parts(REQ, PacketType.SUBMIT_JOB, b"f\0g", b"", big)


def test_join_bytes_is_bytes_join(big_packet_mode):
    from gearnb.buffers import HUGE_PAGES_MIN, join_bytes

    big = bytes(range(256)) * (HUGE_PAGES_MIN // 256 + 3)
    for parts in ([], [b"a"], [b"head", big, b"tail"], [b"h", memoryview(big)[5:], bytearray(b"ba")],
                  [memoryview(big).cast("B", (len(big) // 4, 4))]):
        joined = join_bytes(parts)
        assert type(joined) is bytes and joined == b"".join(parts)
    for parts in ([b"....", b"x"], [b"....", big, memoryview(big)[3:]]):  # room kept, filled last
        joined = join_bytes(parts, first=lambda: b"MAC!")
        assert type(joined) is bytes and joined == b"".join([b"MAC!", *parts[1:]])
    with pytest.raises(ValueError, match="first"):
        join_bytes([b"..", big], first=lambda: b"too long")


def test_encode_gathered_sends_the_buffers_as_they_are():
    from gearnb.buffers import BufferList
    from gearnb.protocol.codec import BIG_PACKET, encode_gathered

    big = bytes(range(256)) * (BIG_PACKET // 256 + 1)
    last = BufferList([b"GNB2", memoryview(big)[7:], b"", b"tail"])
    parts = encode_gathered(REQ, PacketType.WORK_COMPLETE, b"H:1", last=last)
    assert b"".join(parts) == encode(REQ, PacketType.WORK_COMPLETE, b"H:1", b"".join(last))
    assert parts[2] is last[1]  # not copied
    packets = Decoder(REQ).feed(b"".join(parts))
    assert packets[0].args == (b"H:1", b"".join(last))
    with pytest.raises(ProtocolError):
        encode_gathered(REQ, PacketType.WORK_COMPLETE, b"H\0:1", last=last)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(BIG_TYPES), st.integers(0, 3 * 65536), st.data())
def test_reading_into_get_buffer(big_packet_mode, ptype, size, data):
    """As asyncio.BufferedProtocol and recv_into use it: read into get_buffer(), then
    buffer_updated(n); large packets are read straight into their final bytes object."""
    from gearnb.protocol.codec import BIG_PACKET

    count = ARG_COUNT[ptype]
    leading = [data.draw(arg_without_nul) for _ in range(count - 1)]
    last = (bytes(range(256)) * (size // 256 + 1))[:size + BIG_PACKET // 2]
    big = Packet(REQ, ptype, (*leading, last))
    small = Packet(REQ, PacketType.ECHO_REQ, (b"x",))
    stream = b"".join(encode(REQ, p.type, *p.args) for p in (big, small, small, big, small))
    decoder = Decoder(REQ)
    out = []
    pos = 0
    while pos < len(stream):
        buffer = decoder.get_buffer()
        n = min(len(buffer), len(stream) - pos, data.draw(st.sampled_from([1, 5, 12, 1000, 70000, 1 << 30])))
        buffer[:n] = stream[pos:pos + n]
        pos += n
        out += decoder.buffer_updated(n)
    assert out == [big, small, small, big, small]
    assert all(type(arg) is bytes for packet in out for arg in packet.args)
    decoder.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=6), st.lists(packets(), min_size=1, max_size=6), st.data())
def test_decoders_sharing_one_read_buffer(first, second, data):
    """A job server's connections all read into one buffer: each decoder keeps what it needs
    before the next read overwrites it, so interleaved streams still decode whole."""
    shared = memoryview(bytearray(64))
    streams = [b"".join(encode(REQ, p.type, *p.args) for p in plist) for plist in (first, second)]
    decoders = [Decoder(REQ, read_buffer=shared), Decoder(REQ, read_buffer=shared)]
    outs: list[list[Packet]] = [[], []]
    positions = [0, 0]
    while positions[0] < len(streams[0]) or positions[1] < len(streams[1]):
        i = data.draw(st.sampled_from([k for k in (0, 1) if positions[k] < len(streams[k])]))
        buffer = decoders[i].get_buffer()
        n = min(len(buffer), len(streams[i]) - positions[i], data.draw(st.integers(1, 64)))
        buffer[:n] = streams[i][positions[i]:positions[i] + n]
        positions[i] += n
        outs[i] += decoders[i].buffer_updated(n)
    assert outs[0] == [Packet(REQ, p.type, p.args) for p in first]
    assert outs[1] == [Packet(REQ, p.type, p.args) for p in second]
