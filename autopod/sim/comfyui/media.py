"""Small real media files for the stand-in's output nodes that Pillow does not write: uncompressed AVI,
WAV (the standard library's ``wave``), opaque blobs. Images, GIF included, are ``images``' (Pillow).

All of them stream to disk frame by frame (or chunk by chunk), so their size is bounded by
the disk, not by memory, and each is a file that ordinary tools open (browsers, ffmpeg,
the ``wave`` module).
"""

from __future__ import annotations

import hashlib
import math
import struct
import wave
from typing import BinaryIO, Callable

from .images import Frame

# -- AVI (uncompressed RGB) ----------------------------------------------------------------------

def _riff_chunk(fourcc: bytes, data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return fourcc + struct.pack("<I", len(data)) + data + pad


def write_avi(out: BinaryIO, frames: list[Frame], fps: float) -> None:
    """A RIFF AVI with one uncompressed 24-bit video stream (what ffmpeg calls rawvideo bgr24).

    Every frame has the same size, so every offset is known up front and the file is written
    in one pass, one frame in memory at a time."""
    w, h, n = frames[0].width, frames[0].height, len(frames)
    row = (w * 3 + 3) & ~3
    frame_size = row * h
    rate, scale = max(1, round(fps * 1000)), 1000
    avih = struct.pack("<10I4I", round(1_000_000 / fps), int(frame_size * fps), 0, 0x10, n, 0, 1, frame_size, w, h,
                       0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"DIB ", 0, 0, 0, 0, scale, rate, 0, n, frame_size,
                       0xFFFFFFFF, 0, 0, 0, w, h)
    strf = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, frame_size, 0, 0, 0, 0)
    strl = b"LIST" + struct.pack("<I", 4 + 8 + len(strh) + 8 + len(strf)) + b"strl" + \
        _riff_chunk(b"strh", strh) + _riff_chunk(b"strf", strf)
    hdrl_body = b"hdrl" + _riff_chunk(b"avih", avih) + strl
    hdrl = b"LIST" + struct.pack("<I", len(hdrl_body)) + hdrl_body
    movi_size = 4 + n * (8 + frame_size)  # frame_size is a multiple of 4: no pad bytes
    idx1 = b"".join(b"00db" + struct.pack("<III", 0x10, 4 + i * (8 + frame_size), frame_size) for i in range(n))
    riff_size = 4 + len(hdrl) + 8 + movi_size + 8 + len(idx1)
    out.write(b"RIFF" + struct.pack("<I", riff_size) + b"AVI " + hdrl)
    out.write(b"LIST" + struct.pack("<I", movi_size) + b"movi")
    pad = bytes(row - w * 3)
    for frame in frames:
        rows = list(frame.rows())
        data = bytearray()
        for r in reversed(rows):  # bottom-up, BGR, rows padded to 4 bytes
            bgr = bytearray(r)
            bgr[0::3], bgr[2::3] = r[2::3], r[0::3]
            data += bgr + pad
        out.write(b"00db" + struct.pack("<I", frame_size) + data)
    out.write(_riff_chunk(b"idx1", idx1))


# -- WAV -----------------------------------------------------------------------------------------

def write_wav(path: str, seconds: float, frequency: float, sample_rate: int,
              check: Callable[[], None] = lambda: None) -> int:
    """A mono 16-bit sine tone, written a second at a time. Returns the number of frames."""
    total = max(1, round(seconds * sample_rate))
    step = 2 * math.pi * frequency / sample_rate
    with wave.open(path, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        for start in range(0, total, sample_rate):
            check()
            n = min(sample_rate, total - start)
            wav.writeframes(struct.pack(f"<{n}h", *(int(16383 * math.sin(step * (start + i))) for i in range(n))))
    return total


# -- opaque blobs --------------------------------------------------------------------------------

MIB = 1024 * 1024


def blob_block(seed: str) -> bytes:
    """1 MiB of incompressible, reproducible bytes (a download can be checked against its seed)."""
    base = hashlib.sha256(seed.encode()).digest()
    return b"".join(hashlib.sha256(base + i.to_bytes(4, "big")).digest() for i in range(MIB // 32))


def write_blob(out: BinaryIO, size_mb: int, seed: str, on_chunk: Callable[[int], None] = lambda i: None) -> None:
    block = blob_block(seed)
    for i in range(size_mb):
        on_chunk(i)
        out.write(block)
