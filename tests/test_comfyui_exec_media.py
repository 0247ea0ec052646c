"""The stand-in's pixels and files: PNG, APNG, GIF, AVI and WAV that real decoders open, and ComfyUI's pixel maths."""

from __future__ import annotations

import io
import math
import random
import struct
import subprocess
import wave
import zlib

import pytest

from autopod.sim.comfyui import images as im
from autopod.sim.comfyui import media

PIL = pytest.importorskip("PIL.Image")


def noise(w: int, h: int, seed: int = 1) -> im.Frame:
    rnd = random.Random(seed)
    return im.Frame(w, h, bytes(rnd.randrange(256) for _ in range(w * h * 3)))


def to_pil(data: bytes):
    return PIL.open(io.BytesIO(data))


def test_png_written_is_read_by_pillow_with_its_text_chunks():
    buf = io.BytesIO()
    frame = im.solid(64, 48, 0x336699)
    im.write_png(buf, 64, 48, frame.rows(), text={"prompt": '{"1": {}}', "workflow": "{}"})
    img = to_pil(buf.getvalue())
    assert (img.size, img.mode, img.getpixel((63, 47))) == ((64, 48), "RGB", (0x33, 0x66, 0x99))
    assert img.text == {"prompt": '{"1": {}}', "workflow": "{}"}
    assert im.png_size(buf.getvalue()) == (64, 48)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_png_reader_undoes_every_filter_pillow_writes(mode):
    src = PIL.new(mode, (37, 21))
    rnd = random.Random(7)
    src.putdata([tuple(rnd.randrange(256) for _ in mode) for _ in range(37 * 21)])
    buf = io.BytesIO()
    src.save(buf, "PNG", optimize=True)  # adaptive filtering: Sub, Up, Average and Paeth rows
    png = im.read_png(buf.getvalue())
    assert (png.width, png.height) == (37, 21)
    assert png.rgb == src.convert("RGB").tobytes()
    assert png.alpha == (src.getchannel("A").tobytes() if mode == "RGBA" else None)


def test_png_reader_refuses_what_it_cannot_decode():
    with pytest.raises(im.NotAPNG):
        im.read_png(b"this is no image at all")
    samples = []
    for mode in ("L", "P", "I;16"):
        buf = io.BytesIO()
        PIL.new(mode, (8, 8)).save(buf, "PNG")
        samples.append(buf.getvalue())
    buf = io.BytesIO()
    im.write_png(buf, 8, 8, im.solid(8, 8, 0).rows())
    data = bytearray(buf.getvalue())
    data[28] = 1  # IHDR's interlace byte (Pillow never writes Adam7)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    samples.append(bytes(data))
    for sample in samples:
        with pytest.raises(im.UnsupportedImage, match="8-bit RGB or RGBA"):
            im.read_png(sample)


def test_blur_is_comfyuis_gaussian_with_reflect_padding():
    w, h, r, sigma = 9, 7, 3, 1.5
    frame = noise(w, h)
    out = im.blur(frame, r, sigma)
    k = 2 * r + 1
    lin = [-1 + 2 * i / (k - 1) for i in range(k)]
    kern = [[math.exp(-(x * x + y * y) / (2 * sigma * sigma)) for y in lin] for x in lin]
    total = sum(map(sum, kern))

    def refl(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    px = frame.rgb
    for y in range(h):
        for x in range(w):
            for c in range(3):
                want = sum(kern[i][j] / total * px[(refl(y + i - r, h) * w + refl(x + j - r, w)) * 3 + c]
                           for i in range(k) for j in range(k))
                assert abs(out.rgb[(y * w + x) * 3 + c] - want) <= 0.5 + 1e-6
    assert im.blur(im.solid(40, 40, 0x123456), 31, 5.0) == im.solid(40, 40, 0x123456)  # stays solid, no pixels
    with pytest.raises(RuntimeError, match="Padding size should be less"):
        im.blur(im.solid(16, 16, 0), 31, 1.0)


def test_scale_and_center_crop():
    frame = noise(8, 4)
    up = im.scale(frame, 16, 8, "nearest-exact")
    assert up.pixel(0, 0) == frame.pixel(0, 0) and up.pixel(15, 7) == frame.pixel(7, 3)
    smooth = im.scale(frame, 5, 3, "bilinear")
    assert (smooth.width, smooth.height, len(smooth.rgb)) == (5, 3, 45)
    assert im.crop_center(frame, 10, 10).width == 4  # 2:1 cut to 1:1 in the middle
    assert im.scale(im.solid(4, 4, 7), 1000, 1000, "lanczos").solid


def test_gif_animates_loops_and_keeps_colours():
    frames = [im.solid(37, 21, 0xFF0000), noise(37, 21), im.solid(37, 21, 0x0000FF)]
    buf = io.BytesIO()
    media.write_gif(buf, frames, fps=8)
    gif = to_pil(buf.getvalue())
    assert gif.format == "GIF" and gif.n_frames == 3 and gif.info["loop"] == 0 and gif.info["duration"] in (120, 130)
    gif.seek(0)
    assert gif.convert("RGB").getpixel((36, 20)) == (255, 0, 0)
    gif.seek(1)
    got, want = gif.convert("RGB").getpixel((5, 5)), frames[1].pixel(5, 5)
    assert all(abs(a - b) <= 32 for a, b in zip(got, want))  # quantised to the 5x5x5 cube
    gif.seek(2)
    assert gif.convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    big = io.BytesIO()
    media.write_gif(big, [im.solid(300, 200, 0x123456)], fps=1)  # many LZW clear codes
    img = to_pil(big.getvalue())
    img.load()
    assert img.convert("RGB").getpixel((299, 199)) == (0, 64, 64)


def test_apng_has_every_frame():
    buf = io.BytesIO()
    im.write_apng(buf, [im.solid(20, 10, 0xFF0000), im.solid(20, 10, 0x0000FF)], delay_ms=125, text={"prompt": "{}"})
    img = to_pil(buf.getvalue())
    assert img.is_animated and img.n_frames == 2
    img.seek(1)
    assert img.convert("RGB").getpixel((19, 9)) == (0, 0, 255)


def test_avi_is_raw_video_ffmpeg_decodes(tmp_path):
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    a, b = im.solid(33, 17, 0xFF0000), noise(33, 17)
    path = tmp_path / "v.avi"
    with path.open("wb") as f:
        media.write_avi(f, [a, b], fps=8)
    p = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == a.pixels() + b.pixels()  # both frames, top row first, exact colours
    info = subprocess.run([ffmpeg, "-i", str(path)], capture_output=True, text=True, timeout=60).stderr
    assert "rawvideo" in info and "33x17" in info and "8 fps" in info


def test_wav_and_blob(tmp_path):
    path = tmp_path / "a.wav"
    assert media.write_wav(str(path), 1.5, 440.0, 8000) == 12000
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 8000, 12000)
    block = media.blob_block("x")
    assert len(block) == media.MIB and block == media.blob_block("x") != media.blob_block("y")
    buf = io.BytesIO()
    media.write_blob(buf, 3, "x")
    assert buf.getvalue() == block * 3
