"""The ``autopod`` command: the task namespace shipped as a binary, the way fabric ships ``fab``.

``tasks.py`` at the repository root re-exports ``ns`` so that ``invoke pod.list``
works in a checkout too, with the same contract (see ``contract`` below, which
both programs apply).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from invoke import Collection, Exit, ParseError, Program

from . import __version__
from .core.errors import ExitCode
from .runpod import lifecycle, serverless
from .tasks import comfy, config, endpoint, model, pod, sim, tunnel, volume
from .tasks._base import set_debug, stdout_gone

ns = Collection()
for _module in (pod, volume, model, tunnel, comfy, endpoint, sim, config):
    ns.add_collection(Collection.from_module(_module))


def _stop_tunnel(pod_id: str) -> None:
    """Stopping or killing a pod also stops its SSH tunnel. The pod room cannot import the tunnel
    room (tunnels build on pods), so the two are joined here; paramiko is imported only when needed."""
    from .core.ui import progress
    from .tunnels.manager import stop_tunnel_for

    if stop_tunnel_for(pod_id):
        progress(f"stopped the SSH tunnel to pod {pod_id}")


lifecycle.on_pod_stopped(_stop_tunnel)


def _models_after_up(api: Any, spec: Any, outcome: Any, dry_run: bool) -> Any:
    """pod.up makes the volume hold the spec's ``models``; the models room builds on the pod room."""
    if not getattr(spec, "models", None):
        return outcome
    from .models.ops import after_pod_up

    return after_pod_up(api, spec, outcome, dry_run)


lifecycle.after_pod_up(_models_after_up)


def _models_after_endpoint_up(endpoint: dict, spec: Any, dry_run: bool) -> list[str]:
    """endpoint.up on a volume names the model files its workers would not see; the models room reads the
    volume through a pod, and builds on the pod room."""
    volume = getattr(spec, "volume_id", None) or endpoint.get("volume_id") or \
        next(iter(endpoint.get("networkVolumes") or []), None)
    if not isinstance(volume, str):
        return []
    from .models.ops import endpoint_notes
    from .runpod.api import connect

    return endpoint_notes(connect(), endpoint, volume)


serverless.after_endpoint_up(_models_after_endpoint_up)

# invoke's core flags that configure Context.run(): autopod tasks never run local shell commands, so
# `--dry` or `--warn-only` would be accepted and silently ignored. The autopod program does not offer them.
RUN_FLAGS = ("dry", "echo", "hide", "pty", "prompt-for-sudo-password", "warn-only", "command-timeout", "config")


def _flag_argument(ctx: Any, flag: str) -> Any:
    """The invoke Argument ``flag`` (``--x``, ``--no-x``, ``-d``) stands for in parser context ``ctx``, or None."""
    if flag in ctx.flags:
        return ctx.flags[flag]
    if flag in ctx.inverse_flags:
        return ctx.flags[ctx.inverse_flags[flag]]
    return None


def _is_task(coll: Collection, tok: str) -> bool:
    """``tok`` names a task or an alias (``Collection.__contains__`` raises on an empty name)."""
    try:
        return bool(tok.strip()) and not tok.startswith("-") and tok in coll
    except ValueError:
        return False


class contract:
    """The parts of the task contract that belong to the command line as a whole, for any invoke Program."""

    @staticmethod
    def json_requested(argv: list[str]) -> bool:
        return any(a == "--json" or a.startswith("--json=") for a in argv)

    @staticmethod
    def parse_tasks(program: Program, parse: Callable[[], None], *, refuse: tuple[str, ...] = ()) -> None:
        """invoke's task parsing (``parse``) with the contract around it: plain words become flags,
        repeated flags and the core flags in ``refuse`` are named, and every error is exit 2."""
        try:
            given = [f for f in refuse if f in program.args and program.args[f].value]
            if given:
                raise ParseError(f"--{given[0]} configures shell commands, which autopod's tasks never run; "
                                 "leave it out (the dry run of pod.create and pod.up is their --dry-run)")
            words = contract.after_dashes(program)
            if words:
                raise ParseError(f"no autopod task takes words after '--' (got {words!r}); leave the '--' out")
            contract.plain_args(program)
            problem = contract.repeated_flag(program)
            if problem:
                raise ParseError(problem)
            parse()
        except ParseError as e:
            contract.parse_failed(program, e)

    @staticmethod
    def after_dashes(program: Program) -> str:
        """The words after a standalone ``--``, which invoke keeps aside for shell commands and autopod's
        tasks would silently drop; only ``--complete`` (tab completion) reads them."""
        core = getattr(program, "core", None)
        args = getattr(program, "args", None)
        if core is None or (args is not None and "complete" in args and args["complete"].value):
            return ""
        return core.remainder or ""

    @staticmethod
    def parse_cleanup(program: Program, parse: Callable[[], None]) -> None:
        try:
            parse()
        except ParseError as e:
            contract.parse_failed(program, e)

    @staticmethod
    def parse_failed(program: Program, e: Exception) -> None:
        """A bad command line is a usage error (2), and ``--json`` still gets its one document."""
        from .core.output import dump_json, safe_text

        msg = contract.repeated_flag(program) or contract.explain(str(e))
        if contract.json_requested(list(getattr(program, "argv", None) or [])):
            try:
                dump_json({"changed": False, "failed": True, "msg": msg, "exit_code": int(ExitCode.USAGE)})
            except BrokenPipeError:
                stdout_gone()
        raise Exit(f"error: {safe_text(msg)}", code=ExitCode.USAGE) from None

    @staticmethod
    def explain(msg: str) -> str:
        """invoke's parse errors in words a user of autopod's flags recognises."""
        import re

        m = re.match(r"Flag <Argument: ([^ >(]+)[^>]*> needed value and was not given one!", msg)
        if m:
            return f"--{m.group(1).replace('_', '-')} needs a value"
        return msg

    @staticmethod
    def repeated_flag(program: Program) -> str | None:
        """The contract's word on a flag given twice, ``--json=yes`` and a repeatable flag without a
        value (invoke says "No idea what '8' is!", or takes ``--x=1 --x=2`` and ``--json --json``
        silently). Every flag counts, switches and core flags too (``--wait`` and ``--no-wait`` are one
        flag); only repeatable flags (``--gpu``) may be given again."""
        coll = getattr(program, "collection", None)
        if coll is None:
            return None
        core_ctx = getattr(program, "initial_context", None)
        core = getattr(program, "core", None)
        argv = list(getattr(program, "argv", None) or [])[1:]
        argv = argv[:argv.index("--")] if "--" in argv else argv
        # The core flags before the first task, then the tasks' part (as rewritten by plain_args).
        first = getattr(program, "_core_tokens", None)
        if first is None or core is None:
            first = next((i for i, tok in enumerate(argv) if _is_task(coll, tok)), len(argv))
        tokens = argv[:first] + (list(core.unparsed) if core is not None else argv[first:])
        contexts = {c.name: c for c in coll.to_contexts()}
        task_name, seen, seen_core = None, {}, {}
        skip = False
        for n, tok in enumerate(tokens):
            if skip:
                skip = False
                continue
            if _is_task(coll, tok):
                task_name, seen = tok, {}
                continue
            if not tok.startswith("-") or tok == "-":
                continue
            flag, has_value = tok.split("=", 1)[0], "=" in tok
            ctx = contexts.get(task_name) if task_name else None
            arg = _flag_argument(ctx, flag) if ctx is not None else None
            where, used = task_name, seen
            if arg is None:
                arg = _flag_argument(core_ctx, flag) if core_ctx is not None else None
                where, used = "autopod", seen_core
            if arg is None:
                continue  # invoke names an unknown flag itself
            shown = "--" + arg.name.replace("_", "-")
            if arg.kind is bool:
                if has_value:
                    return f"{flag} takes no value (got {tok!r}); give {flag} alone"
            elif arg.kind is list:
                if not has_value and (n + 1 == len(tokens) or tokens[n + 1].startswith("--")):
                    return f"{shown} needs a value"  # invoke would take a repeatable flag without one silently
                skip = not has_value
                continue
            else:
                skip = not has_value and not getattr(arg, "optional", False)
            if arg.name in used:
                if used[arg.name] != flag:  # --wait and --no-wait
                    return f"{used[arg.name]} and {flag} are both given to {where}; give one of them"
                plain = getattr(coll[task_name], "plain_arg", None) if where != "autopod" else None
                also = f" (or as the word after {task_name})" if plain and plain.replace("_", "-") == arg.name else ""
                return f"{flag} is given twice to {where}{also}; give it once"
            used[arg.name] = flag
        return None

    @staticmethod
    def plain_args(program: Program) -> None:
        """``pod.info flux`` -> ``pod.info --pod flux`` for tasks with a ``plain_arg``: one bare word
        right after the task's name or its flags (every bare word when the flag is repeatable, as
        ``comfy.run a.json b.json``), never a word that names a task (a chain)."""
        coll = program.collection
        core = getattr(program, "core", None)
        if coll is None or core is None:
            return
        out: list[str] = []
        tokens = list(core.unparsed)
        body = list(program.argv[1:])
        body = body[:body.index("--")] if "--" in body else body
        program._core_tokens = len(body) - len(tokens)  # what the core flags took, for repeated_flag
        task, plain, given, many = None, None, False, False
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            i += 1
            if _is_task(coll, tok):
                task = coll[tok]
                plain, given = getattr(task, "plain_arg", None), False
                arg = next((a for a in task.get_arguments() if plain in a.names), None) if plain else None
                many = arg is not None and arg.kind is list
                out.append(tok)
            elif tok.startswith("--") and task is not None:
                out.append(tok)
                name = tok[2:].split("=", 1)[0]
                arg = next((a for a in task.get_arguments() if name in a.names), None)
                if name == plain and not many:
                    given = True
                if arg is not None and arg.kind is not bool and "=" not in tok and i < len(tokens):
                    out.append(tokens[i])  # the flag's value, whatever it looks like
                    i += 1
            elif plain and (many or not given) and not tok.startswith("-"):
                out += [f"--{plain}", tok]
                given = True
            else:
                out.append(tok)
        core.unparsed = out

    @staticmethod
    def execute(program: Program, run: Any) -> None:
        """Run the parsed tasks; a chain with ``--json`` anywhere prints one JSON document, an
        array with each task's document in order (the failing task's document last)."""
        from .core import output

        contexts = list(program.tasks or [])
        chained_json = len(contexts) > 1 and any("json" in c.args and c.args["json"].value for c in contexts)
        if not chained_json:
            run()
            return
        for c in contexts:
            if "json" in c.args:
                c.args["json"].value = True
        output.collect_json()
        try:
            run()
        finally:
            try:
                output.flush_json()
            except BrokenPipeError:
                stdout_gone()


class AutopodProgram(Program):
    """Invoke's Program with autopod's contract: bad flags are usage errors (2), ``--json``
    always yields one document, Ctrl-C is 130, a closed stdout ends quietly, and the core
    flags that only configure shell commands are gone."""

    def core_args(self) -> list:
        return [a for a in super().core_args() if not set(a.names) & set(RUN_FLAGS)]

    def parse_core(self, argv: Any) -> None:
        try:
            super().parse_core(argv)
        except ParseError as e:
            contract.parse_failed(self, e)

    def parse_tasks(self) -> None:
        contract.parse_tasks(self, super().parse_tasks)
        set_debug(bool(self.args.debug.value))

    def parse_cleanup(self) -> None:
        contract.parse_cleanup(self, super().parse_cleanup)

    def update_config(self, merge: bool = True) -> None:
        # Program.update_config maps the removed run flags and a runtime config file into the
        # config; autopod reads neither (its settings are config.yaml and the inventory).
        if merge:
            self.config.merge()

    def execute(self) -> None:
        contract.execute(self, super().execute)

    def run(self, argv: Any = None, exit: bool = True) -> None:
        try:
            super().run(argv, exit)
        except BrokenPipeError:
            try:
                stdout_gone()
            except Exit:
                pass
            if exit:
                sys.exit(ExitCode.BROKEN_PIPE)
        except KeyboardInterrupt:  # before or between tasks (a task maps its own)
            if exit:
                sys.exit(ExitCode.INTERRUPTED)


def make_program() -> AutopodProgram:
    """A fresh Program (tests create one per run)."""
    return AutopodProgram(namespace=ns, version=__version__, name="autopod", binary="autopod",
                          binary_names=["autopod"])


program = make_program()


def main() -> None:
    program.run()
