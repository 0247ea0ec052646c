"""IMAGE values for the stand-in's model-free nodes, and their files, written and read by Pillow as ComfyUI does.

An IMAGE is what ComfyUI passes between nodes: a batch of frames of one size. A frame
is either real pixels (8-bit RGB, rows top to bottom) or a solid colour, which costs no
memory: an ``EmptyImage`` of 16384x16384 stays a few bytes until a node needs pixels,
and blurring or scaling a solid frame gives a solid frame (as it does in ComfyUI).
Saving is where pixels are needed: Pillow encodes a whole frame, as it does in ComfyUI.

Files go through Pillow with ComfyUI's own arguments (PNG with ``prompt``/``workflow`` text
chunks and compress level 4, APNG with ``comf`` chunks after the image data, animated WebP
with the metadata in EXIF): a SaveImage PNG is, byte for byte, the file the recorded ComfyUI wrote.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from PIL import Image as Pil
from PIL import ImageFile, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo


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


# -- files ---------------------------------------------------------------------------------------

def to_pil(frame: Frame) -> Pil.Image:
    if frame.rgb is None:
        return Pil.new("RGB", (frame.width, frame.height), frame.color)
    return Pil.frombytes("RGB", (frame.width, frame.height), frame.rgb)


def metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """What ComfyUI's save nodes embed: ``prompt`` and each ``extra_pnginfo`` key (the editor's ``workflow``)."""
    text = {}
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            text[str(key)] = json.dumps(value)
    return text


def _text_chunks(text: dict[str, str] | None) -> PngInfo:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return info


def save_png(out: BinaryIO, frame: Frame, *, text: dict[str, str] | None = None, level: int = 4) -> None:
    """SaveImage (level 4) and PreviewImage (level 1): tEXt chunks before the image data."""
    to_pil(frame).save(out, "PNG", pnginfo=_text_chunks(text), compress_level=level)


def save_apng(out: BinaryIO, frames: list[Frame], *, fps: float, text: dict[str, str] | None = None,
              level: int = 4) -> None:
    """SaveAnimatedPNG: the metadata goes in private ``comf`` chunks after the image data, not in tEXt."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add(b"comf", key.encode("latin-1", "strict") + b"\0" + value.encode("latin-1", "strict"),
                 after_idat=True)
    first, *rest = (to_pil(f) for f in frames)
    first.save(out, "PNG", pnginfo=info, compress_level=level, save_all=True, duration=int(1000.0 / fps),
               append_images=rest)


WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def save_webp(out: BinaryIO, frames: list[Frame], *, fps: float, lossless: bool, quality: int, method: str,
              text: dict[str, str] | None = None) -> None:
    """SaveAnimatedWEBP: one animated file; the prompt in EXIF tag 0x0110 (Model) as ``prompt:{...}``, each
    extra_pnginfo key from 0x010F (Make) downwards."""
    first, *rest = (to_pil(f) for f in frames)
    exif = first.getexif()
    tag = 0x010F
    for key, value in (text or {}).items():
        if key == "prompt":
            exif[0x0110] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    first.save(out, "WEBP", save_all=True, duration=int(1000.0 / fps), append_images=rest, exif=exif,
               lossless=lossless, quality=quality, method=WEBP_METHODS[method])


def save_gif(out: BinaryIO, frames: list[Frame], fps: float) -> None:
    """An animated GIF that loops, as VideoHelperSuite's Video Combine saves ``image/gif`` through Pillow."""
    first, *rest = (to_pil(f) for f in frames)
    first.save(out, "GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)


def _lenient(fn: Any, arg: Any) -> Any:
    """ComfyUI's node_helpers.pillow: a truncated file is read again with LOAD_TRUNCATED_IMAGES on."""
    try:
        return fn(arg)
    except (OSError, ValueError) as e:
        if isinstance(e, Pil.UnidentifiedImageError):
            raise
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def load_image(path: Path) -> tuple[Image, Mask]:
    """LoadImage: every frame of the first frame's size (a GIF is a batch), EXIF rotation applied; the mask is
    1 - alpha (of the first frame), or ComfyUI's 64x64 placeholder when the file has no alpha."""
    with _lenient(Pil.open, path) as img:  # no image: PIL.UnidentifiedImageError, as in ComfyUI
        frames: list[Frame] = []
        mask: Mask | None = None
        sequence = [img] if img.format == "MPO" else ImageSequence.Iterator(img)
        for page in sequence:
            page = _lenient(ImageOps.exif_transpose, page)
            if page.mode == "I":
                page = page.point(lambda v: v * (1 / 255))
            rgb = page.convert("RGB")
            if frames and rgb.size != (frames[0].width, frames[0].height):
                continue  # ComfyUI skips frames of another size
            frames.append(Frame(rgb.width, rgb.height, rgb.tobytes()))
            if mask is None:
                if "A" in page.getbands():
                    alpha = page.getchannel("A")
                elif page.mode == "P" and "transparency" in page.info:
                    alpha = page.convert("RGBA").getchannel("A")
                else:
                    alpha = None
                mask = Mask(64, 64, None) if alpha is None else \
                    Mask(alpha.width, alpha.height, alpha.point(lambda a: 255 - a).tobytes())
    assert mask is not None
    return Image(tuple(frames)), mask


@dataclass
class Decoded:
    """A file's first frame as 8-bit RGB, its alpha (None without one) and its PNG text chunks."""

    width: int
    height: int
    rgb: bytes
    alpha: bytes | None
    text: dict[str, str]
    format: str


def decode(data: bytes) -> Decoded:
    with Pil.open(io.BytesIO(data)) as img:
        alpha = img.getchannel("A").tobytes() if "A" in img.getbands() else None
        return Decoded(img.width, img.height, img.convert("RGB").tobytes(), alpha, dict(getattr(img, "text", {})),
                       img.format or "")


def _png(img: Pil.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def compose_mask(original: Path, mask: bytes) -> bytes:
    """POST /upload/mask: the original's pixels with the uploaded mask's alpha, its text chunks kept, at level 4."""
    with Pil.open(original) as base:
        text = _text_chunks(getattr(base, "text", {}))
        rgba = base.convert("RGBA")
    with Pil.open(io.BytesIO(mask)) as m:
        rgba.putalpha(m.convert("RGBA").getchannel("A"))  # ValueError("images do not match") on another size
    return _png(rgba, compress_level=4, pnginfo=text)


def view_preview(path: Path, preview: str, channel: str) -> tuple[bytes, str]:
    """GET /view?preview=webp;50 (or jpeg;Q): the file re-encoded small; an alpha channel forces WebP."""
    parts = preview.split(";")
    fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with Pil.open(path) as img:
        if fmt == "jpeg" or channel == "rgb":
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=quality)
    return buf.getvalue(), f"image/{fmt}"


def view_channel(path: Path, channel: str) -> bytes:
    """GET /view?channel=rgb (the colours, as PNG) or channel=a (the alpha on black, as RGBA PNG)."""
    with Pil.open(path) as img:
        if channel == "rgb":
            return _png(Pil.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB"))
        alpha = img.getchannel("A") if img.mode == "RGBA" else Pil.new("L", img.size, 255)
        out = Pil.new("RGBA", img.size)
        out.putalpha(alpha)
        return _png(out)


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
