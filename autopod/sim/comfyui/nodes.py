"""The nodes the stand-in executes: six model-free ComfyUI nodes (plus SaveAnimatedPNG and
SaveAnimatedWEBP) and its own.

Real nodes keep the inputs, outputs and ``input_order`` of their recorded ``object_info``
entries and behave like ComfyUI's (file names, ``ui`` outputs, errors). The stand-in's own
nodes (category ``autopod/sim``) exist for what a client must cope with and no model-free
core node produces: progress steps and interrupts (``AutopodSleep``), a failing node
(``AutopodFail``), GIF, video and audio outputs, and a large file for download benchmarks
(``AutopodBigFile``).

Every node is ``run(ctx, **inputs) -> (outputs, ui)``; ``ui`` is what ComfyUI puts in the
``executed`` event and in the history's ``outputs`` (None: nothing to show).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import images as im
from . import media
from .folders import Folders


class Interrupted(Exception):
    """ComfyUI's InterruptProcessingException: raised at the next node boundary or progress step."""


@dataclass
class RunContext:
    folders: Folders
    node_id: str
    state: dict  # lives as long as the node id keeps its class (ComfyUI reuses node objects)
    progress: Callable[[int, int], None] = lambda value, total: None  # ProgressBar hook: may raise Interrupted
    wait: Callable[[float], None] = lambda seconds: None  # sleeps; returns early when interrupted
    check_interrupt: Callable[[], None] = lambda: None


@dataclass
class NodeDef:
    name: str
    run: Callable[..., tuple[tuple, dict | None]]
    info: dict | None = None  # object_info entry; None: the recorded one
    validate: Callable[..., Any] | None = None  # VALIDATE_INPUTS(folders, **named) -> True | message
    validate_args: tuple[str, ...] = ()
    is_changed: Callable[[Folders, dict], Any] | None = None
    extra: dict = field(default_factory=dict)


def _write_atomic(path: Path, writer: Callable[[Any], None]) -> None:
    """Write to a hidden part file, then rename: /view never serves half a file."""
    part = path.with_name(f".{path.name}.part")
    try:
        with part.open("wb") as f:
            writer(f)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


# -- real nodes ----------------------------------------------------------------------------------

def empty_image(ctx: RunContext, width: int, height: int, batch_size: int = 1, color: int = 0, **_: Any):
    frame = im.solid(width, height, color)
    return (im.Image((frame,) * batch_size),), None


def save_images(ctx: RunContext, images: im.Image, filename_prefix: str, kind: str, level: int,
                prompt: Any = None, extra_pnginfo: Any = None) -> dict:
    base = ctx.folders.dir_for(kind)
    assert base is not None
    folder, filename, counter, subfolder = ctx.folders.save_path(filename_prefix, base, images.width, images.height)
    text = im.metadata(prompt, extra_pnginfo)
    results = []
    for batch_number, frame in enumerate(images.frames):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        _write_atomic(folder / name, lambda f, fr=frame: im.save_png(f, fr, text=text, level=level))
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"images": results}


def save_image(ctx: RunContext, images: im.Image, filename_prefix: str = "ComfyUI", prompt: Any = None,
               extra_pnginfo: Any = None, **_: Any):
    return (), save_images(ctx, images, filename_prefix, "output", 4, prompt, extra_pnginfo)


def preview_image(ctx: RunContext, images: im.Image, prompt: Any = None, extra_pnginfo: Any = None, **_: Any):
    suffix = ctx.state.setdefault("prefix_append",
                                  "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5)))
    return (), save_images(ctx, images, "ComfyUI" + suffix, "temp", 1, prompt, extra_pnginfo)


def load_image(ctx: RunContext, image: str, **_: Any):
    return im.load_image(ctx.folders.annotated_path(image)), None


def load_image_validate(folders: Folders, image: str) -> Any:
    if not folders.exists_annotated(image):
        return f"Invalid image file: {image}"
    return True


def load_image_changed(folders: Folders, inputs: dict) -> Any:
    try:
        return hashlib.sha256(folders.annotated_path(str(inputs.get("image"))).read_bytes()).hexdigest()
    except (OSError, ValueError):
        return "missing"


def image_blur(ctx: RunContext, image: im.Image, blur_radius: int, sigma: float, **_: Any):
    return (im.Image(tuple(im.blur(f, blur_radius, sigma, len(image)) for f in image.frames)),), None


def image_scale(ctx: RunContext, image: im.Image, upscale_method: str, width: int, height: int, crop: str,
                **_: Any):
    if width == 0 and height == 0:
        return (image,), None
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    out = []
    for frame in image.frames:
        if crop == "center":
            frame = im.crop_center(frame, width, height)
        out.append(im.scale(frame, width, height, upscale_method))
    return (im.Image(tuple(out)),), None


def save_animated_png(ctx: RunContext, images: im.Image, filename_prefix: str = "ComfyUI", fps: float = 6.0,
                      compress_level: int = 4, prompt: Any = None, extra_pnginfo: Any = None, **_: Any):
    folder, filename, counter, subfolder = ctx.folders.save_path(filename_prefix, ctx.folders.output,
                                                                 images.width, images.height)
    name = f"{filename}_{counter:05}_.png"
    _write_atomic(folder / name, lambda f: im.save_apng(f, list(images.frames), fps=fps,
                                                        text=im.metadata(prompt, extra_pnginfo), level=compress_level))
    return (), {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": (True,)}


def save_animated_webp(ctx: RunContext, images: im.Image, filename_prefix: str = "ComfyUI", fps: float = 6.0,
                       lossless: bool = True, quality: int = 80, method: str = "default", prompt: Any = None,
                       extra_pnginfo: Any = None, **_: Any):
    """ComfyUI 0.3.64's SaveAnimatedWEBP: the whole batch in one file; ``animated`` is false for one frame."""
    folder, filename, counter, subfolder = ctx.folders.save_path(filename_prefix, ctx.folders.output,
                                                                 images.width, images.height)
    name = f"{filename}_{counter:05}_.webp"
    _write_atomic(folder / name, lambda f: im.save_webp(f, list(images.frames), fps=fps, lossless=lossless,
                                                        quality=quality, method=method,
                                                        text=im.metadata(prompt, extra_pnginfo)))
    return (), {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
                "animated": (len(images) != 1,)}


def not_executable(name: str) -> Callable[..., Any]:
    def run(ctx: RunContext, **_: Any):
        raise NotImplementedError(f"the ComfyUI stand-in validates {name} but cannot execute it (it runs model-free "
                                  "nodes only)")
    return run


# -- the stand-in's own nodes --------------------------------------------------------------------

SIM_MODULE = "custom_nodes.autopod_sim"
SIM_CATEGORY = "autopod/sim"
_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def _info(name: str, display: str, description: str, required: dict, outputs: list[str], *,
          output_node: bool = False, hidden: dict | None = None) -> dict:
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if hidden:
        inputs["hidden"] = hidden
        order["hidden"] = list(hidden)
    return {"input": inputs, "input_order": order, "output": outputs, "output_is_list": [False] * len(outputs),
            "output_name": list(outputs), "name": name, "display_name": display, "description": description,
            "python_module": SIM_MODULE, "category": SIM_CATEGORY, "output_node": output_node}


def _prefix(default: str) -> list:
    return ["STRING", {"default": default, "tooltip": "Prefix of the saved file; may contain subfolders."}]


def sleep_node(ctx: RunContext, image: im.Image, seconds: float, steps: int, **_: Any):
    per_step = seconds / steps
    for step in range(1, steps + 1):
        ctx.wait(per_step)
        ctx.progress(step, steps)  # like a sampler step: raises Interrupted when an interrupt is pending
    return (image,), None


def fail_node(ctx: RunContext, image: im.Image, message: str, **_: Any):
    raise RuntimeError(message)


def _vhs_save(ctx: RunContext, images: im.Image, filename_prefix: str, frame_rate: float, ext: str, fmt: str,
              writer: Callable[[Any, list, float], None], prompt: Any, extra_pnginfo: Any) -> dict:
    """VideoHelperSuite's shape: ``gifs`` entries with ``format``, plus a first-frame PNG carrying the workflow."""
    folder, filename, _, subfolder = ctx.folders.save_path(filename_prefix, ctx.folders.output,
                                                           images.width, images.height)
    counter = ctx.folders.vhs_counter(folder, filename)
    first = images.frames[0]
    png = f"{filename}_{counter:05}.png"
    _write_atomic(folder / png, lambda f: im.save_png(f, first, text=im.metadata(prompt, extra_pnginfo)))
    name = f"{filename}_{counter:05}.{ext}"
    _write_atomic(folder / name, lambda f: writer(f, list(images.frames), frame_rate))
    return {"gifs": [{"filename": name, "subfolder": subfolder, "type": "output", "format": fmt,
                      "frame_rate": frame_rate, "workflow": png, "fullpath": str(folder / name)}]}


def save_gif_node(ctx: RunContext, images: im.Image, filename_prefix: str, frame_rate: float, prompt: Any = None,
                  extra_pnginfo: Any = None, **_: Any):
    return (), _vhs_save(ctx, images, filename_prefix, frame_rate, "gif", "image/gif", im.save_gif, prompt,
                         extra_pnginfo)


def save_video_node(ctx: RunContext, images: im.Image, filename_prefix: str, frame_rate: float, prompt: Any = None,
                    extra_pnginfo: Any = None, **_: Any):
    return (), _vhs_save(ctx, images, filename_prefix, frame_rate, "avi", "video/avi", media.write_avi, prompt,
                         extra_pnginfo)


def save_audio_node(ctx: RunContext, filename_prefix: str, seconds: float, frequency: float, sample_rate: int,
                    **_: Any):
    folder, filename, counter, subfolder = ctx.folders.save_path(filename_prefix, ctx.folders.output)
    name = f"{filename}_{counter:05}_.wav"
    part = folder / f".{name}.part"
    try:
        media.write_wav(str(part), seconds, frequency, sample_rate, check=ctx.check_interrupt)
        os.replace(part, folder / name)
    finally:
        part.unlink(missing_ok=True)
    return (), {"audio": [{"filename": name, "subfolder": subfolder, "type": "output"}]}


def big_file_node(ctx: RunContext, size_mb: int, filename_prefix: str, **_: Any):
    folder, filename, counter, subfolder = ctx.folders.save_path(filename_prefix, ctx.folders.output)
    name = f"{filename}_{counter:05}_.bin"
    every = max(1, size_mb // 100)  # about a hundred progress events, whatever the size

    def chunk(i: int) -> None:
        ctx.check_interrupt()
        if i and i % every == 0:
            ctx.progress(i, size_mb)

    _write_atomic(folder / name, lambda f: media.write_blob(f, size_mb, name, chunk))
    ctx.progress(size_mb, size_mb)
    return (), {"files": [{"filename": name, "subfolder": subfolder, "type": "output"}]}


SIM_NODES: dict[str, NodeDef] = {d.name: d for d in (
    NodeDef("AutopodSleep", sleep_node, _info(
        "AutopodSleep", "Sleep (autopod sim)",
        "Passes the image through after `seconds`, in `steps` progress steps; an interrupt stops it between steps.",
        {"image": ["IMAGE", {}],
         "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}],
         "steps": ["INT", {"default": 10, "min": 1, "max": 10000, "step": 1}]},
        ["IMAGE"])),
    NodeDef("AutopodFail", fail_node, _info(
        "AutopodFail", "Fail (autopod sim)", "Raises RuntimeError(message) when it runs: an execution_error on demand.",
        {"image": ["IMAGE", {}],
         "message": ["STRING", {"default": "AutopodFail: failing on purpose", "multiline": False}]},
        ["IMAGE"])),
    NodeDef("AutopodSaveGIF", save_gif_node, _info(
        "AutopodSaveGIF", "Save GIF (autopod sim)",
        "Saves the batch as an animated GIF; ui output `gifs` with `format`, like VideoHelperSuite.",
        {"images": ["IMAGE", {}], "filename_prefix": _prefix("AutopodGIF"),
         "frame_rate": ["FLOAT", {"default": 8.0, "min": 0.1, "max": 100.0, "step": 0.1}]},
        [], output_node=True, hidden=_HIDDEN)),
    NodeDef("AutopodSaveVideo", save_video_node, _info(
        "AutopodSaveVideo", "Save Video (autopod sim)",
        "Saves the batch as an uncompressed AVI; ui output `gifs` with `format` video/avi, like VideoHelperSuite.",
        {"images": ["IMAGE", {}], "filename_prefix": _prefix("AutopodVideo"),
         "frame_rate": ["FLOAT", {"default": 8.0, "min": 0.1, "max": 100.0, "step": 0.1}]},
        [], output_node=True, hidden=_HIDDEN)),
    NodeDef("AutopodSaveAudio", save_audio_node, _info(
        "AutopodSaveAudio", "Save Audio (autopod sim)",
        "Saves a sine tone as a 16-bit WAV; ui output `audio`, like ComfyUI's SaveAudio.",
        {"filename_prefix": _prefix("audio/AutopodAudio"),
         "seconds": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 600.0, "step": 0.01}],
         "frequency": ["FLOAT", {"default": 440.0, "min": 20.0, "max": 20000.0, "step": 1.0}],
         "sample_rate": ["INT", {"default": 44100, "min": 8000, "max": 192000, "step": 1}]},
        [], output_node=True)),
    NodeDef("AutopodBigFile", big_file_node, _info(
        "AutopodBigFile", "Big File (autopod sim)",
        "Writes size_mb MiB of opaque bytes to disk in 1 MiB chunks; ui output `files`. For download benchmarks.",
        {"size_mb": ["INT", {"default": 64, "min": 1, "max": 4096, "step": 1}],
         "filename_prefix": _prefix("AutopodBig")},
        [], output_node=True)),
)}

REAL_NODES: dict[str, NodeDef] = {d.name: d for d in (
    NodeDef("EmptyImage", empty_image),
    NodeDef("SaveImage", save_image),
    NodeDef("PreviewImage", preview_image),
    NodeDef("LoadImage", load_image, validate=load_image_validate, validate_args=("image",),
            is_changed=load_image_changed),
    NodeDef("ImageBlur", image_blur),
    NodeDef("ImageScale", image_scale),
    NodeDef("SaveAnimatedPNG", save_animated_png),
    NodeDef("SaveAnimatedWEBP", save_animated_webp),
)}
