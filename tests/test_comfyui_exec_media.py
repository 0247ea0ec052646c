"""The stand-in's pixels and files: PNG, APNG, WebP and GIF as ComfyUI saves them (Pillow), AVI and WAV that
real decoders open, and ComfyUI's pixel maths."""

from __future__ import annotations

import io
import math
import random
import re
import subprocess
import wave

import pytest

from autopod.sim.comfyui import images as im
from autopod.sim.comfyui import media

PIL = pytest.importorskip("PIL.Image")


def noise(w: int, h: int, seed: int = 1) -> im.Frame:
    rnd = random.Random(seed)
    return im.Frame(w, h, bytes(rnd.randrange(256) for _ in range(w * h * 3)))


def to_pil(data: bytes):
    return PIL.open(io.BytesIO(data))


def test_png_carries_comfyuis_text_chunks_at_its_compress_level():
    frame = noise(64, 48)
    saved = {}
    for level in (1, 4):  # PreviewImage, SaveImage
        buf = io.BytesIO()
        im.save_png(buf, frame, text=im.metadata({"1": {}}, {"workflow": {"nodes": []}}), level=level)
        saved[level] = buf.getvalue()
        img = to_pil(saved[level])
        assert (img.size, img.mode, img.tobytes()) == ((64, 48), "RGB", frame.rgb)
        assert img.text == {"prompt": '{"1": {}}', "workflow": '{"nodes": []}'}
        assert saved[level].index(b"tEXtprompt") < saved[level].index(b"IDAT")  # before the pixels, as ComfyUI
    for level, zlib_header in ((1, b"\x78\x01"), (4, b"\x78\x5e")):  # zlib's FLEVEL: fastest, fast
        idat = saved[level].index(b"IDAT")
        assert saved[level][idat + 4:idat + 6] == zlib_header
    solid = io.BytesIO()
    im.save_png(solid, im.solid(3, 2, 0x336699))
    assert to_pil(solid.getvalue()).getpixel((2, 1)) == (0x33, 0x66, 0x99)


def test_decode_gives_rgb_alpha_and_text():
    src = PIL.new("RGBA", (5, 4), (1, 2, 3, 77))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    got = im.decode(buf.getvalue())
    assert (got.width, got.height, got.rgb, got.alpha, got.text, got.format) == \
        (5, 4, bytes((1, 2, 3)) * 20, bytes([77]) * 20, {}, "PNG")
    with pytest.raises(PIL.UnidentifiedImageError):
        im.decode(b"this is no image at all")


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
    im.save_gif(buf, frames, fps=8)
    gif = to_pil(buf.getvalue())
    assert gif.format == "GIF" and gif.n_frames == 3 and gif.info["loop"] == 0 and gif.info["duration"] in (120, 130)
    gif.seek(0)
    assert gif.convert("RGB").getpixel((36, 20)) == (255, 0, 0)
    gif.seek(1)
    got, want = gif.convert("RGB").getpixel((5, 5)), frames[1].pixel(5, 5)
    assert all(abs(a - b) <= 48 for a, b in zip(got, want))  # quantised to a 256-colour palette
    gif.seek(2)
    assert gif.convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    same = io.BytesIO()
    im.save_gif(same, [im.solid(300, 200, 0x123456)] * 4, fps=10)  # identical frames: one, shown 4x as long
    img = to_pil(same.getvalue())
    assert (img.n_frames, img.info["duration"], img.convert("RGB").getpixel((299, 199))) == (1, 400, (0x12, 0x34, 0x56))


def test_apng_has_every_frame_and_comfyuis_comf_chunks():
    buf = io.BytesIO()
    im.save_apng(buf, [im.solid(20, 10, 0xFF0000), im.solid(20, 10, 0x0000FF)], fps=8.0,
                 text=im.metadata({"1": {}}, {"workflow": {}}), level=4)
    data = buf.getvalue()
    img = to_pil(data)
    assert img.is_animated and img.n_frames == 2 and img.info["duration"] == 125
    img.seek(1)
    assert img.convert("RGB").getpixel((19, 9)) == (0, 0, 255)
    chunks = re.findall(rb"comf([a-z]+)\0", data)
    assert chunks == [b"prompt", b"workflow"] and data.index(b"comf") > data.index(b"IDAT")


def test_animated_webp_carries_the_prompt_in_exif():
    frames = [im.solid(16, 8, 0xFF0000), noise(16, 8)]
    buf = io.BytesIO()
    im.save_webp(buf, frames, fps=10.0, lossless=True, quality=80, method="fastest",
                 text=im.metadata({"1": {}}, {"workflow": {"a": 1}, "extra": 2}))
    img = to_pil(buf.getvalue())
    assert (img.format, img.n_frames) == ("WEBP", 2)
    img.seek(1)
    assert img.convert("RGB").tobytes() == frames[1].rgb and img.info["duration"] == 100
    exif = img.getexif()  # Model 0x0110 is the prompt; Make 0x010F and downwards the extra_pnginfo keys
    assert (exif[0x0110], exif[0x010F], exif[0x010E]) == ('prompt:{"1": {}}', 'workflow:{"a": 1}', "extra:2")
    lossy = io.BytesIO()
    im.save_webp(lossy, frames, fps=10.0, lossless=False, quality=10, method="default")
    assert len(lossy.getvalue()) != len(buf.getvalue())


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
