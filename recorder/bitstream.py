"""Encoded media frames as the recorder receives them, and the little bitstream parsing
pass-through needs: keyframe flags, picture sizes, Opus packet durations.

A decoder used to tell us these things; without one we read them from the first bytes of
each frame (RFC 6386 for VP8, ITU-T H.264 7.3 for the SPS, RFC 6716 for the Opus TOC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AUDIO_CODECS",
    "CLOCK_RATES",
    "VIDEO_CODECS",
    "CodecName",
    "EncodedFrame",
    "is_keyframe",
    "opus_packet_samples",
    "video_dimensions",
]

CodecName = Literal["vp8", "h264", "opus"]
VIDEO_CODECS: frozenset[str] = frozenset({"vp8", "h264"})
AUDIO_CODECS: frozenset[str] = frozenset({"opus"})
# RTP clock rates fixed by the payload formats (RFC 7741, RFC 6184, RFC 7587).
CLOCK_RATES: dict[str, int] = {"vp8": 90_000, "h264": 90_000, "opus": 48_000}

_H264_IDR = 5
_H264_SPS = 7
# profile_idc values whose SPS carries chroma_format_idc and friends (H.264 7.3.2.1.1).
_H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One whole encoded frame (VP8 frame, H.264 access unit in Annex B, Opus packet).

    ``rtp_timestamp`` is the 32-bit RTP timestamp as sent (it wraps); ``first_sequence``
    and ``last_sequence`` are the RTP sequence numbers of the frame's first and last
    packet (16-bit, they wrap too), so a consumer can tell a gap between frames from a
    frame-rate change. ``complete`` is False when the frame is known to miss packets at
    its start or end. ``arrival`` is ``time.monotonic()`` when its first packet arrived.
    ``ssrc`` is the sender's synchronization source, for keyframe requests.
    """

    codec: CodecName
    data: bytes
    rtp_timestamp: int
    keyframe: bool
    first_sequence: int
    last_sequence: int
    arrival: float
    complete: bool = True
    ssrc: int = 0

    @property
    def kind(self) -> Literal["audio", "video"]:
        return "video" if self.codec in VIDEO_CODECS else "audio"


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether ``data`` can be decoded on its own (VP8 key frame, H.264 IDR; every Opus packet)."""
    if codec == "vp8":
        # RFC 6386 9.1: bit 0 of the frame tag is 0 for key frames, which carry a start code.
        return len(data) >= 10 and data[0] & 1 == 0 and data[3:6] == b"\x9d\x01\x2a"
    if codec == "h264":
        return any(nal and nal[0] & 0x1F == _H264_IDR for nal in _annex_b_nal_units(data))
    return codec == "opus"


def video_dimensions(codec: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) carried by a keyframe, or None if ``data`` is not one we can read."""
    if codec == "vp8":
        if not is_keyframe(codec, data):
            return None
        # RFC 6386 9.2: 14 bits of size, 2 bits of upscaling, little endian.
        width = int.from_bytes(data[6:8], "little") & 0x3FFF
        height = int.from_bytes(data[8:10], "little") & 0x3FFF
        return (width, height) if width and height else None
    if codec == "h264":
        for nal in _annex_b_nal_units(data):
            if nal and nal[0] & 0x1F == _H264_SPS:
                try:
                    return _h264_sps_dimensions(nal)
                except (IndexError, ValueError):
                    return None
    return None


def opus_packet_samples(data: bytes) -> int:
    """Samples at 48 kHz that one Opus packet decodes to (RFC 6716 3.1); 0 if malformed."""
    if not data:
        return 0
    toc = data[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(data) < 2:
            return 0
        count = data[1] & 0x3F
    return frame * count


def _annex_b_nal_units(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream (what aiortc's H.264 depayloader produces) into NAL units."""
    units: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        start += 3
        end = data.find(b"\x00\x00\x01", start)
        if end < 0:
            units.append(data[start:])
            break
        # A 4-byte start code leaves one zero byte at the end of the previous unit.
        units.append(data[start : end - 1] if data[end - 1] == 0 else data[start:end])
        start = end
    return units


class _BitReader:
    """Big-endian bit reader over an RBSP with Exp-Golomb codes (H.264 9.1)."""

    def __init__(self, rbsp: bytes) -> None:
        self._data = rbsp
        self._pos = 0

    def bit(self) -> int:
        byte = self._data[self._pos >> 3]
        value = (byte >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _h264_sps_dimensions(nal: bytes) -> tuple[int, int]:
    # Remove emulation prevention bytes (00 00 03 -> 00 00) to get the RBSP.
    rbsp = bytearray()
    zeros = 0
    for byte in nal[1:]:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        rbsp.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    reader = _BitReader(bytes(rbsp))
    profile_idc = reader.bits(8)
    reader.bits(16)  # constraint flags, level_idc
    reader.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in _H264_HIGH_PROFILES:
        chroma_format_idc = reader.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = reader.bit()
        reader.ue()  # bit_depth_luma_minus8
        reader.ue()  # bit_depth_chroma_minus8
        reader.bit()  # qpprime_y_zero_transform_bypass_flag
        if reader.bit():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if reader.bit():
                    _skip_scaling_list(reader, 16 if index < 6 else 64)
    reader.ue()  # log2_max_frame_num_minus4
    pic_order_cnt_type = reader.ue()
    if pic_order_cnt_type == 0:
        reader.ue()
    elif pic_order_cnt_type == 1:
        reader.bit()
        reader.se()
        reader.se()
        for _ in range(reader.ue()):
            reader.se()
    reader.ue()  # max_num_ref_frames
    reader.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = reader.ue() + 1
    height_map_units = reader.ue() + 1
    frame_mbs_only = reader.bit()
    if not frame_mbs_only:
        reader.bit()  # mb_adaptive_frame_field_flag
    reader.bit()  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if reader.bit():  # frame_cropping_flag
        left, right, top, bottom = reader.ue(), reader.ue(), reader.ue(), reader.ue()
        if chroma_format_idc == 0 or separate_colour_plane:
            crop_x, crop_y = 1, 2 - frame_mbs_only
        else:
            sub_width = 1 if chroma_format_idc == 3 else 2
            sub_height = 2 if chroma_format_idc == 1 else 1
            crop_x, crop_y = sub_width, sub_height * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    if width <= 0 or height <= 0:
        raise ValueError("bad SPS dimensions")
    return width, height


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last, next_scale = 8, 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last + reader.se() + 256) % 256
        last = next_scale if next_scale != 0 else last
