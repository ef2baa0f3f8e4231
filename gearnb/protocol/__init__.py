"""The Gearman protocol, sans-IO: packet table, encoder and incremental decoder."""

from .codec import (
    Decoder, ProtocolError, check_args, encode, encode_packet, pack, pack_parts, request, response, split_args,
)
from .packets import (
    ADMIN_LINE,
    ARG_COUNT,
    DEFAULT_MAX_PACKET_SIZE,
    HEADER,
    HEADER_SIZE,
    HIGH,
    LOW,
    NORMAL,
    PRIORITY_NAMES,
    PT,
    REQ,
    RES,
    SUBMIT_TYPE_FOR,
    SUBMIT_TYPES,
    AdminLine,
    Packet,
    PacketType,
)

__all__ = [
    "ADMIN_LINE", "ARG_COUNT", "DEFAULT_MAX_PACKET_SIZE", "HEADER", "HEADER_SIZE", "HIGH", "LOW", "NORMAL", "PRIORITY_NAMES",
    "PT", "REQ", "RES", "SUBMIT_TYPE_FOR", "SUBMIT_TYPES", "AdminLine", "Decoder", "Packet", "PacketType",
    "ProtocolError", "check_args", "encode", "encode_packet", "pack", "pack_parts", "request", "response",
    "split_args",
]
