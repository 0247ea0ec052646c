"""Batches: ``--sweep NODE.INPUT=VALUES`` and ``--repeat N --seed fixed|random|increment``.

A sweep's values are an inclusive whole-number range ``a..b``, a comma list
(``512,768,1024``; spaces around items dropped), or ``@file`` with one value per line
(blank lines skipped; use this for values that contain commas). Several sweeps form a
cross product, and the whole product runs ``repeat`` times.

Order, deterministic: repeat by repeat; within one, the first sweep varies slowest.
Every value is checked against the schema before any variant exists.

Seeds: the seed inputs (:func:`seed_inputs`) that no sweep sets get, per repeat ``r``:
``fixed`` the workflow's value, ``increment`` that value plus ``r`` (wrapping to the
minimum past the maximum), ``random`` a draw from ``rng`` within the input's range
(capped at 2**50, like the editor's "randomize"). One repeat's seeds are shared by all
its sweep combinations, so a sweep compares like with like.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import schema as sch
from .overrides import check_value, read_text_file, resolve_target, split_spec
from .workflow import WorkflowError, is_link, node_sort_key, prompt_node_label

SEED_MODES = ("fixed", "random", "increment")
MAX_VARIANTS = 10_000
RANDOM_MAX = 2 ** 50  # the editor's cap for a random seed (exact in JavaScript numbers)
_RANGE = re.compile(r"^(-?[0-9]+)\.\.(-?[0-9]+)$")


@dataclass
class Sweep:
    """``--sweep NODE.INPUT=VALUES``; ``values`` still uncoerced (text, or ints from a range)."""

    node: str
    input: str
    values: list[Any]
    spec: str = ""

    @property
    def target(self) -> str:
        return f"{self.node}.{self.input}"


def parse_sweep(spec: str, *, read_file: Callable[[str], str] = read_text_file) -> Sweep:
    """``KSampler.seed=1..8``, ``1.width=512,768,1024``, ``6.text=@prompts.txt``."""
    node, name, text = split_spec(spec, "--sweep")
    if text.startswith("@") and not text.startswith("@@"):
        if not text[1:]:
            raise WorkflowError(f"--sweep {spec}: '@' must be followed by a file name")
        values: list[Any] = [line for line in read_file(text[1:]).splitlines() if line.strip()]
        if not values:
            raise WorkflowError(f"--sweep {spec}: {text[1:]} has no values (one per line)")
        return Sweep(node, name or "", values, spec)
    m = _RANGE.match(text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise WorkflowError(f"--sweep {spec}: the range {text} is empty (write it low..high)")
        if hi - lo + 1 > MAX_VARIANTS:
            raise WorkflowError(f"--sweep {spec}: {hi - lo + 1} values; at most {MAX_VARIANTS} variants")
        return Sweep(node, name or "", list(range(lo, hi + 1)), spec)
    if text.startswith("@@"):
        text = text[1:]
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise WorkflowError(f"--sweep {spec}: expected a..b, a comma list of values or @file, "
                            "with no empty values")
    return Sweep(node, name or "", parts, spec)


def _is_seed(name: str, spec: Any) -> bool:
    return sch.value_kind(spec) == "INT" and (name in ("seed", "noise_seed") or (
        "seed" in name.lower() and sch.has_control_after_generate(name, spec)))


@dataclass
class _Seed:
    node: str
    input: str
    lo: int | None
    hi: int | None


def _seeds(prompt: dict[str, Any], object_info: dict[str, Any]) -> list[_Seed]:
    """Seed inputs with the range a value must keep: the input's own, narrowed by what it feeds."""
    found: dict[tuple[str, str], _Seed] = {}
    fed: list[tuple[str, Any]] = []  # (node feeding a seed by a link, the seed's spec)
    for node_id in sorted(prompt, key=node_sort_key):
        node = prompt[node_id]
        schema = sch.class_schema(object_info, node.get("class_type"))
        if schema is None:
            continue
        for name, spec, _ in sch.ordered_inputs(schema):
            if not _is_seed(name, spec):
                continue
            value = node["inputs"].get(name)
            if is_link(value):
                fed.append((value[0], spec))
            else:
                found[node_id, name] = _Seed(node_id, name, *_bounds(spec))
    # A node that feeds a seed (PrimitiveInt, a seed generator): its one control-after-generate INT is the seed.
    for source, consumer_spec in fed:
        node = prompt.get(source)
        schema = sch.class_schema(object_info, node.get("class_type")) if node else None
        if schema is None:
            continue
        ints = [(n, s) for n, s, _ in sch.ordered_inputs(schema)
                if sch.has_control_after_generate(n, s) and not is_link(node["inputs"].get(n))]
        if len(ints) != 1:
            continue
        name, spec = ints[0]
        seed = found.setdefault((source, name), _Seed(source, name, *_bounds(spec)))
        lo, hi = _bounds(consumer_spec)
        seed.lo = lo if seed.lo is None else seed.lo if lo is None else max(seed.lo, lo)
        seed.hi = hi if seed.hi is None else seed.hi if hi is None else min(seed.hi, hi)
    return sorted(found.values(), key=lambda s: (node_sort_key(s.node), s.input))


def _bounds(spec: Any) -> tuple[int | None, int | None]:
    lo, hi = sch.int_range(spec)
    return (math.ceil(lo) if lo is not None else None, math.floor(hi) if hi is not None else None)


def seed_inputs(prompt: dict[str, Any], object_info: dict[str, Any]) -> list[tuple[str, str]]:
    """(node_id, input) of the seeds: INT inputs named like a seed that the editor gives a "control
    after generate" widget (``seed``, ``noise_seed``, ...), holding a value rather than a link; and,
    for a seed fed by a link, the control-after-generate INT of the node feeding it (PrimitiveInt)."""
    return [(s.node, s.input) for s in _seeds(prompt, object_info)]


@dataclass
class Variant:
    """One prompt of a batch, with the swept values (``{"3.cfg": 6.5}``) and seeds (``{"3.seed": 5}``) it got."""

    index: int
    prompt: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)


def expand(prompt: dict[str, Any], object_info: dict[str, Any], *, sweeps: list[Sweep] | tuple[Sweep, ...] = (),
           repeat: int = 1, seed: str = "fixed", rng: random.Random | None = None) -> list[Variant]:
    """Every variant of ``prompt``: the cross product of ``sweeps``, ``repeat`` times, with seeds per ``seed``."""
    if seed not in SEED_MODES:
        raise WorkflowError(f"--seed must be one of {', '.join(SEED_MODES)}, got {seed!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise WorkflowError(f"--repeat must be a whole number of at least 1, got {repeat!r}")
    axes: list[tuple[str, str, list[Any]]] = []
    for s in sweeps:
        node_id, name = resolve_target(prompt, s.target, "--sweep")
        if any((node_id, name) == (n, i) for n, i, _ in axes):
            raise WorkflowError(f"--sweep {s.spec or s.target}: {prompt_node_label(prompt, node_id)} input "
                                f"{name!r} is swept twice")
        label = prompt_node_label(prompt, node_id)
        values = [check_value(prompt[node_id]["class_type"], name or "", v, object_info, node_label=label)
                  for v in s.values]
        if not values:
            raise WorkflowError(f"--sweep {s.spec or s.target}: no values")
        axes.append((node_id, name or "", values))
    total = math.prod(len(v) for _, _, v in axes) * repeat
    if total > MAX_VARIANTS:
        raise WorkflowError(f"the batch has {total} variants; at most {MAX_VARIANTS} (fewer sweep values or repeats)")
    swept = {(n, i) for n, i, _ in axes}
    seeds = [s for s in _seeds(prompt, object_info) if (s.node, s.input) not in swept]
    rng = rng or random.Random()
    combos = list(itertools.product(*(values for _, _, values in axes)))
    variants: list[Variant] = []
    for r in range(repeat):
        seed_values = {f"{s.node}.{s.input}": (s, _seed_value(prompt, s, seed, r, rng)) for s in seeds}
        for combo in combos:
            p = copy.deepcopy(prompt)
            overrides = {}
            for (node_id, name, _), value in zip(axes, combo):
                p[node_id]["inputs"][name] = value
                overrides[f"{node_id}.{name}"] = value
            for s, value in seed_values.values():
                p[s.node]["inputs"][s.input] = value
            variants.append(Variant(len(variants), p, overrides, {k: v for k, (_, v) in seed_values.items()}))
    return variants


def _seed_value(prompt: dict[str, Any], s: _Seed, mode: str, r: int, rng: random.Random) -> int:
    current = prompt[s.node]["inputs"].get(s.input)
    base = current if isinstance(current, int) and not isinstance(current, bool) else (s.lo or 0)
    if mode == "fixed":
        return base
    if mode == "increment":
        value = base + r
        if s.hi is not None and value > s.hi:
            lo = s.lo or 0
            value = lo + (value - lo) % (s.hi - lo + 1)
        return value
    lo = max(s.lo or 0, 0)
    hi = min(s.hi, RANDOM_MAX) if s.hi is not None else RANDOM_MAX
    return rng.randint(lo, max(lo, hi))
