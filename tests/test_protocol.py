"""The sans-IO codec: every packet type round-trips; bad bytes raise ProtocolError only."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
            assert isinstance(item, (Packet, AdminLine))
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


def test_oversize_refused_without_buffering():
    decoder = Decoder(REQ, max_packet_size=1000)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b"\0REQ" + struct.pack(">II", 16, 0xFFFFFFFF))
    assert info.value.code == "ARGUMENT_TOO_LARGE"
    assert decoder.buffered == 0


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
