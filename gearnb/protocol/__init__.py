"""The Gearman protocol, sans-IO: packet table, encoder and incremental decoder."""

from .codec import Decoder, ProtocolError, encode, encode_packet, request, response, split_args
from .packets import (
    ARG_COUNT,
    DEFAULT_MAX_PACKET_SIZE,
    HIGH,
    LOW,
    NORMAL,
    PRIORITY_NAMES,
    REQ,
    RES,
    SUBMIT_TYPE_FOR,
    SUBMIT_TYPES,
    AdminLine,
    Packet,
    PacketType,
)

__all__ = [
    "ARG_COUNT", "DEFAULT_MAX_PACKET_SIZE", "HIGH", "LOW", "NORMAL", "PRIORITY_NAMES", "REQ",
    "RES", "SUBMIT_TYPE_FOR", "SUBMIT_TYPES", "AdminLine", "Decoder", "Packet", "PacketType",
    "ProtocolError", "encode", "encode_packet", "request", "response", "split_args",
]
