"""Live progress of a render on stderr: a bar per prompt on a terminal, plain lines elsewhere.

The bar shows nodes done out of the prompt's nodes, the current node's class and title, and
sampler steps (``progress`` events). When stderr is not a terminal (a script, a log file, CI)
there are no bars, only one line per change of state, so logs stay readable.
"""

from __future__ import annotations

import sys
from typing import Any

from ..core.output import safe_text
from ..core.ui import progress as line


class Progress:
    def __init__(self, *, enabled: bool | None = None):
        self.bars = enabled if enabled is not None else _stderr_is_terminal()
        self._bar: Any = None
        self._label = ""
        self._node = ""
        self._steps = ""

    def start(self, label: str, total_nodes: int) -> None:
        """A prompt started running on the server."""
        self.close_bar()
        self._label, self._node, self._steps = label, "", ""
        if self.bars:
            from tqdm import tqdm

            self._bar = tqdm(total=total_nodes, desc=safe_text(label), unit="node", file=sys.stderr, leave=True,
                             dynamic_ncols=True, bar_format="{desc}: {n_fmt}/{total_fmt} nodes |{bar}|{postfix}")
        else:
            line(f"{label}: running ({total_nodes} nodes)")

    def cached(self, n: int) -> None:
        self._advance(n)

    def node(self, node_id: str, class_type: str, title: str | None, *, where: str | None = None) -> None:
        """A node started; the one before it (if any) is done. ComfyUI sends ``executed`` only for
        nodes with output, so node starts are what counts. ``where``: its subgraph, for a node inside one."""
        if self._node:
            self._advance(1)
        self._node = (f"{node_id} {class_type}" + (f" '{title}'" if title and title != class_type else "")
                      + (f" in {where}" if where else ""))
        self._steps = ""
        self._show()

    def step(self, value: int, maximum: int) -> None:
        self._steps = f"step {value}/{maximum}"
        self._show()

    def finish(self, label: str, status: str, detail: str = "") -> None:
        """A prompt ended (success, error, interrupted); the bar stays on screen with the result."""
        if self._bar is not None and self._label == label:
            if status == "success" and self._bar.total:
                self._bar.update(self._bar.total - self._bar.n)
            self._bar.set_postfix_str(safe_text(f"{status}{': ' + detail if detail else ''}"), refresh=False)
            self.close_bar()
        else:
            self.note(f"{label}: {status}{': ' + detail if detail else ''}")

    def note(self, msg: str) -> None:
        """A line between bars (uploads, reconnects, warnings)."""
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(safe_text(msg), file=sys.stderr)
        else:
            line(msg)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(safe_text(" ".join(x for x in (self._node, self._steps) if x)))


def _stderr_is_terminal() -> bool:

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
