"""IMAGE values and PNG files in pure Python (zlib + struct), for the stand-in's model-free nodes.

An IMAGE is what ComfyUI passes between nodes: a batch of frames of one size. A frame
is either real pixels (8-bit RGB, rows top to bottom) or a solid colour, which costs no
memory: an ``EmptyImage`` of 16384x16384 stays a few bytes until a node needs pixels,
and blurring or scaling a solid frame gives a solid frame (as it does in ComfyUI).

The PNG reader takes what the stand-in writes and what most tools write by default:
8-bit RGB or RGBA, not interlaced. Other PNGs and other image formats (JPEG, WebP, ...)
raise ``UnsupportedImage``; bytes that are no image at all raise ``NotAPNG``.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class NotAPNG(ValueError):
    pass


class UnsupportedImage(ValueError):
    pass


@dataclass(frozen=True)
class Frame:
    width: int
    height: int
    rgb: bytes | None = None  # width*height*3 bytes; None: every pixel is ``color``
    color: tuple[int, int, int] = (0, 0, 0)

    @property
    def solid(self) -> bool:
        return self.rgb is None

    def row(self, y: int) -> bytes:
        if self.rgb is None:
            return bytes(self.color) * self.width
        stride = self.width * 3
        return self.rgb[y * stride:(y + 1) * stride]

    def rows(self) -> Iterator[bytes]:
        if self.rgb is None:
            row = bytes(self.color) * self.width
            for _ in range(self.height):
                yield row
        else:
            stride = self.width * 3
            for y in range(self.height):
                yield self.rgb[y * stride:(y + 1) * stride]

    def pixels(self) -> bytes:
        return self.rgb if self.rgb is not None else bytes(self.color) * (self.width * self.height)

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        if self.rgb is None:
            return self.color
        i = (y * self.width + x) * 3
        return self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]


@dataclass(frozen=True)
class Image:
    """ComfyUI's IMAGE: a batch of same-size frames."""

    frames: tuple[Frame, ...]

    @property
    def width(self) -> int:
        return self.frames[0].width

    @property
    def height(self) -> int:
        return self.frames[0].height

    def __len__(self) -> int:
        return len(self.frames)

    def __str__(self) -> str:  # what execution_error's current_inputs shows for an IMAGE
        return f"IMAGE(batch={len(self.frames)}, width={self.width}, height={self.height})"


@dataclass(frozen=True)
class Mask:
    """ComfyUI's MASK from LoadImage: 1 - alpha (``data`` holds 255 - alpha; None: all zero)."""

    width: int
    height: int
    data: bytes | None = None

    def __str__(self) -> str:
        return f"MASK(width={self.width}, height={self.height})"


def solid(width: int, height: int, color: int) -> Frame:
    return Frame(width, height, None, ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))


# -- PNG -----------------------------------------------------------------------------------------

def _chunk(out: BinaryIO, kind: bytes, data: bytes) -> None:
    out.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))


def png_header(width: int, height: int, *, alpha: bool = False) -> bytes:
    return struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)


def text_chunk(key: str, value: str) -> bytes:
    """tEXt is Latin-1; ComfyUI's metadata is json.dumps output (ASCII), keys are trimmed to PNG's 79 bytes."""
    k = key.encode("latin-1", "replace")[:79] or b"?"
    return k + b"\0" + value.encode("latin-1", "replace")


def write_png(out: BinaryIO, width: int, height: int, rows: Iterable[bytes], *, alpha: bool = False,
              text: dict[str, str] | None = None, level: int = 4) -> None:
    """Stream a PNG: rows go through one zlib stream, so memory stays flat whatever the size."""
    out.write(PNG_SIGNATURE)
    _chunk(out, b"IHDR", png_header(width, height, alpha=alpha))
    for key, value in (text or {}).items():
        _chunk(out, b"tEXt", text_chunk(key, value))
    _write_idat(out, b"IDAT", rows, level)
    _chunk(out, b"IEND", b"")


def _write_idat(out: BinaryIO, kind: bytes, rows: Iterable[bytes], level: int, prefix: bytes = b"") -> None:
    comp = zlib.compressobj(level)
    buf = bytearray()
    for row in rows:
        buf += comp.compress(b"\0" + row)  # filter type 0 on every row
        if len(buf) >= 1 << 16:
            _chunk(out, kind, prefix + bytes(buf))
            buf.clear()
    buf += comp.flush()
    _chunk(out, kind, prefix + bytes(buf))


def write_apng(out: BinaryIO, frames: list[Frame], *, delay_ms: int, text: dict[str, str] | None = None,
               level: int = 4) -> None:
    """An animated PNG (what ComfyUI's SaveAnimatedPNG writes): one fcTL per frame, the first in IDAT."""
    w, h = frames[0].width, frames[0].height
    out.write(PNG_SIGNATURE)
    _chunk(out, b"IHDR", png_header(w, h))
    _chunk(out, b"acTL", struct.pack(">II", len(frames), 0))
    for key, value in (text or {}).items():
        _chunk(out, b"tEXt", text_chunk(key, value))
    seq = 0
    for i, frame in enumerate(frames):
        _chunk(out, b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, delay_ms, 1000, 0, 0))
        seq += 1
        if i == 0:
            _write_idat(out, b"IDAT", frame.rows(), level)
        else:
            # fdAT carries its sequence number before the data; one fdAT per frame keeps numbering simple.
            data = bytearray()
            comp = zlib.compressobj(level)
            for row in frame.rows():
                data += comp.compress(b"\0" + row)
            data += comp.flush()
            _chunk(out, b"fdAT", struct.pack(">I", seq) + bytes(data))
            seq += 1
    _chunk(out, b"IEND", b"")


@dataclass
class DecodedPNG:
    width: int
    height: int
    rgb: bytes
    alpha: bytes | None
    text: dict[str, str]


def read_png(data: bytes) -> DecodedPNG:
    if not data.startswith(PNG_SIGNATURE):
        raise NotAPNG("not a PNG file")
    pos = len(PNG_SIGNATURE)
    header = None
    idat = bytearray()
    text: dict[str, str] = {}
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise NotAPNG("truncated or corrupt PNG chunk")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            k, _, v = body.partition(b"\0")
            text[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"IEND":
            break
    if header is None:
        raise NotAPNG("PNG without IHDR")
    width, height, depth, ctype, _, _, interlace = header
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise UnsupportedImage(f"PNG with bit depth {depth}, colour type {ctype}, interlace {interlace}: the ComfyUI "
                             "stand-in decodes only 8-bit RGB or RGBA, non-interlaced")
    try:
        raw = zlib.decompress(bytes(idat))
    except zlib.error as e:
        raise NotAPNG(f"corrupt PNG data: {e}") from None
    bpp = 4 if ctype == 6 else 3
    stride = width * bpp
    if len(raw) < (stride + 1) * height:
        raise NotAPNG("truncated PNG data")
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1:start + 1 + stride]), prev, bpp)
        out += line
        prev = line
    if bpp == 3:
        return DecodedPNG(width, height, bytes(out), None, text)
    rgb = bytearray(width * height * 3)
    rgb[0::3], rgb[1::3], rgb[2::3] = out[0::4], out[1::4], out[2::4]
    return DecodedPNG(width, height, bytes(rgb), bytes(out[3::4]), text)


def _unfilter(ft: int, line: bytearray, prev: bytearray, bpp: int) -> bytearray:
    n = len(line)
    if ft == 0:
        return line
    if ft == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif ft == 2:
        line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
    elif ft == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif ft == 4:
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    else:
        raise NotAPNG(f"bad PNG filter type {ft}")
    return line


_OTHER_FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\0", "TIFF"),
                  (b"MM\0*", "TIFF"))


def other_format(data: bytes) -> str | None:
    """The name of an image format the stand-in recognises but does not decode, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _OTHER_FORMATS if data.startswith(magic)), None)


def png_size(data: bytes) -> tuple[int, int]:
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise NotAPNG("not a PNG file")
    return struct.unpack(">II", data[16:24])


# -- pixel operations ----------------------------------------------------------------------------

def _planes(frame: Frame) -> list[list[float]]:
    px = frame.pixels()
    return [list(px[c::3]) for c in range(3)]


def _from_planes(width: int, height: int, planes: list[list[float]]) -> Frame:
    out = bytearray(width * height * 3)
    for c in range(3):
        out[c::3] = bytes(0 if v < 0 else 255 if v > 255 else int(v + 0.5) for v in planes[c])
    return Frame(width, height, bytes(out))


def gaussian_kernel_1d(size: int, sigma: float) -> list[float]:
    """ComfyUI's kernel (linspace(-1, 1, size), exp(-d²/2σ²), normalised); the 2-D one is its outer product."""
    xs = [-1.0 + 2.0 * i / (size - 1) for i in range(size)] if size > 1 else [0.0]
    g = [math.exp(-(x * x) / (2.0 * sigma * sigma)) for x in xs]
    total = sum(g)
    return [v / total for v in g]


def _conv_reflect(line: list[float], kernel: list[float], r: int) -> list[float]:
    padded = line[r:0:-1] + line + line[-2:-r - 2:-1]  # torch's 'reflect' padding (edge not repeated)
    n = len(line)
    acc = [0.0] * n
    for k, w in enumerate(kernel):
        seg = padded[k:k + n]
        acc = [a + w * s for a, s in zip(acc, seg)]
    return acc


def blur(frame: Frame, radius: int, sigma: float, batch: int = 1) -> Frame:
    """ComfyUI's ImageBlur: a Gaussian over reflect-padded pixels (separable, so two 1-D passes)."""
    if radius == 0:
        return frame
    if radius >= frame.width or radius >= frame.height:
        # torch's reflect padding refuses this; ComfyUI reports the RuntimeError as an execution_error
        raise RuntimeError(f"Argument #4: Padding size should be less than the corresponding input dimension, but "
                           f"got: padding ({radius}, {radius}) at dimension 3 of input "
                           f"[{batch}, 3, {frame.height}, {frame.width}]")
    if frame.solid:
        return frame
    kernel = gaussian_kernel_1d(radius * 2 + 1, sigma)
    w, h = frame.width, frame.height
    planes = []
    for plane in _planes(frame):
        rows = [_conv_reflect(plane[y * w:(y + 1) * w], kernel, radius) for y in range(h)]
        cols = [_conv_reflect([rows[y][x] for y in range(h)], kernel, radius) for x in range(w)]
        planes.append([cols[x][y] for y in range(h) for x in range(w)])
    return _from_planes(w, h, planes)


def crop_center(frame: Frame, width: int, height: int) -> Frame:
    """The crop ComfyUI's common_upscale does for crop="center": the source cut to the target's aspect."""
    ow, oh = frame.width, frame.height
    old_aspect, new_aspect = ow / oh, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((ow - ow * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((oh - oh * (old_aspect / new_aspect)) / 2)
    if not x and not y:
        return frame
    cw, ch = ow - 2 * x, oh - 2 * y
    if frame.solid:
        return Frame(cw, ch, None, frame.color)
    rows = [frame.row(yy)[x * 3:(x + cw) * 3] for yy in range(y, y + ch)]
    return Frame(cw, ch, b"".join(rows))


def scale(frame: Frame, width: int, height: int, method: str) -> Frame:
    """Resize: nearest-exact exactly like torch; the smooth methods all as bilinear (align_corners=False)."""
    if (width, height) == (frame.width, frame.height):
        return frame
    if frame.solid:
        return Frame(width, height, None, frame.color)
    sw, sh = frame.width, frame.height
    src = frame.pixels()
    out = bytearray(width * height * 3)
    if method == "nearest-exact":
        xs = [min(int((x + 0.5) * sw / width), sw - 1) * 3 for x in range(width)]
        for y in range(height):
            sy = min(int((y + 0.5) * sh / height), sh - 1)
            base = sy * sw * 3
            row = bytearray(width * 3)
            for i, sx in enumerate(xs):
                row[i * 3:i * 3 + 3] = src[base + sx:base + sx + 3]
            out[y * width * 3:(y + 1) * width * 3] = row
        return Frame(width, height, bytes(out))

    def axis(n_out: int, n_in: int) -> list[tuple[int, int, float]]:
        taps = []
        for d in range(n_out):
            s = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(s), n_in - 1)
            taps.append((i0, min(i0 + 1, n_in - 1), s - i0))
        return taps

    xt, yt = axis(width, sw), axis(height, sh)
    for y, (y0, y1, ly) in enumerate(yt):
        r0, r1 = y0 * sw * 3, y1 * sw * 3
        for x, (x0, x1, lx) in enumerate(xt):
            o = (y * width + x) * 3
            for c in range(3):
                top = src[r0 + x0 * 3 + c] * (1 - lx) + src[r0 + x1 * 3 + c] * lx
                bottom = src[r1 + x0 * 3 + c] * (1 - lx) + src[r1 + x1 * 3 + c] * lx
                v = top * (1 - ly) + bottom * ly
                out[o + c] = 0 if v < 0 else 255 if v > 255 else int(v + 0.5)
    return Frame(width, height, bytes(out))
