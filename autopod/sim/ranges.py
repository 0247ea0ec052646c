"""HTTP byte ranges as the simulator's file servers (the ComfyUI stand-in's /view and editor files, the model
hub) answer them."""

from __future__ import annotations


def byte_range(header: str | None, size: int) -> tuple[int, int, int] | None:
    """(start, end, status) for a ``Range`` header over ``size`` bytes, as aiohttp's FileResponse serves
    it: one range of ``bytes=A-B``, ``bytes=A-`` or ``bytes=-N`` is 206; no header, several ranges or one
    it cannot read is the whole file, 200; a range past the end is None (416)."""
    rng = header or ""
    if not rng.startswith("bytes=") or "," in rng:
        return 0, size - 1, 200
    a, _, b = rng[6:].partition("-")
    try:
        start, end = (int(a), min(int(b), size - 1) if b else size - 1) if a else (max(0, size - int(b)), size - 1)
    except ValueError:
        return None
    return None if start > end or start >= size else (start, end, 206)
