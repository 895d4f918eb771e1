"""The text of a PDF that fpdf2 wrote with embedded TrueType fonts, without a PDF library:
glyph ids in the content streams are mapped back through each font's ToUnicode CMap.

Enough for our own protocols (Tj strings, FlateDecode streams), not a general reader."""

from __future__ import annotations

import re
import zlib

_OBJECT = re.compile(rb"(\d+) 0 obj")
_TOKEN = re.compile(rb"/(\w+)\s+[\d.]+\s+Tf|\(((?:\\.|[^\\)])*)\)\s*Tj", re.S)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _objects(data: bytes) -> dict[int, tuple[bytes, bytes | None]]:
    """Object number -> (dictionary text, decoded stream or None)."""
    found: dict[int, tuple[bytes, bytes | None]] = {}
    cursor = 0
    for match in _OBJECT.finditer(data):
        if match.start() < cursor:
            continue  # inside a stream we already read
        start = match.end()
        end = data.find(b"endobj", start)
        stream_at = data.find(b"stream", start)
        if stream_at != -1 and stream_at < end:
            header = data[start:stream_at]
            length = int(re.search(rb"/Length (\d+)", header).group(1))  # type: ignore[union-attr]
            body_start = (
                stream_at
                + len(b"stream")
                + (2 if data[stream_at + 6 : stream_at + 8] == b"\r\n" else 1)
            )
            body = data[body_start : body_start + length]
            if b"/FlateDecode" in header:
                body = zlib.decompress(body)
            found[int(match.group(1))] = (header, body)
            cursor = body_start + length
        else:
            found[int(match.group(1))] = (data[start:end], None)
            cursor = end
    return found


def _cmap(stream: bytes) -> dict[int, str]:
    mapping: dict[int, str] = {}
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", stream, re.S):
        for source, target in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            mapping[int(source, 16)] = bytes.fromhex(target.decode()).decode("utf-16-be")
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", stream, re.S):
        for low, high, target in re.findall(
            rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block
        ):
            first = ord(bytes.fromhex(target.decode()).decode("utf-16-be"))
            for offset, code in enumerate(range(int(low, 16), int(high, 16) + 1)):
                mapping[code] = chr(first + offset)
    return mapping


def _unescape(raw: bytes) -> bytes:
    out = bytearray()
    index = 0
    while index < len(raw):
        char = raw[index : index + 1]
        if char != b"\\":
            out += char
            index += 1
            continue
        following = raw[index + 1 : index + 2]
        octal = re.match(rb"[0-7]{1,3}", raw[index + 1 : index + 4])
        if octal:
            out.append(int(octal.group(0), 8) & 0xFF)
            index += 1 + len(octal.group(0))
        else:
            out += _ESCAPES.get(following, following)
            index += 2
    return bytes(out)


def pdf_text(data: bytes) -> str:
    """Every string drawn, in order, one per line."""
    objects = _objects(data)
    cmaps: dict[int, dict[int, str]] = {}
    for number, (header, _) in objects.items():
        unicode_ref = re.search(rb"/ToUnicode (\d+) 0 R", header)
        if unicode_ref:
            stream = objects[int(unicode_ref.group(1))][1] or b""
            cmaps[number] = _cmap(stream)
    fonts: dict[bytes, int] = {}
    for header, _ in objects.values():
        for block in re.findall(rb"/Font\s*<<(.*?)>>", header, re.S):
            for name, ref in re.findall(rb"/(\w+)\s+(\d+) 0 R", block):
                fonts[name] = int(ref)
    lines: list[str] = []
    for _header, stream in objects.values():
        if stream is None or b"Tj" not in stream:
            continue
        cmap: dict[int, str] = {}
        for token in _TOKEN.finditer(stream):
            if token.group(1) is not None:
                cmap = cmaps.get(fonts.get(token.group(1), -1), {})
                continue
            raw = _unescape(token.group(2))
            codes = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw) - 1, 2)]
            lines.append("".join(cmap.get(code, "?") for code in codes))
    return "\n".join(lines)
