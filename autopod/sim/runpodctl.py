"""The simulated pod's ``runpodctl``: what RunPod installs in every pod, with a pod-scoped key.

Each simulated pod has ``bin/runpodctl`` on its PATH, a two-line script that runs this module
with the pod's own settings file (the stand-in's URL and key, and the pod's id). It knows the
pod commands a pod uses on itself, in the older and the newer syntax:

    runpodctl stop pod ID      runpodctl pod stop ID
    runpodctl remove pod ID    runpodctl pod delete ID
    runpodctl start pod ID     runpodctl pod start ID
    runpodctl get pod ID       runpodctl pod get ID

Like a pod-scoped key, it may act only on its own pod. It speaks REST v2, so it keeps working when
the simulator answers GraphQL as retired (``sim.start --graphql-retired``). Standard library only: it
starts quickly.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

USAGE = "usage: runpodctl (stop|remove|start|get) pod POD_ID  |  runpodctl pod (stop|delete|start|get) POD_ID"
VERBS = {"stop": "stop", "remove": "terminate", "delete": "terminate", "terminate": "terminate",
         "start": "start", "get": "get"}
DONE = {"stop": 'pod "%s" stopped', "terminate": 'pod "%s" removed', "start": 'pod "%s" started'}


def write_script(bin_dir: Path, settings: Path, python: str) -> Path:
    """``bin_dir/runpodctl``, running this module with ``settings``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "runpodctl"
    script.write_text(f"#!/bin/sh\nexec '{python}' -m autopod.sim.runpodctl --settings '{settings}' \"$@\"\n")
    script.chmod(0o755)
    return script


def parse(words: list[str]) -> tuple[str, str]:
    """(verb, pod id) from either syntax; ValueError with the usage otherwise."""
    if len(words) == 3 and words[1] == "pod" and words[0] in VERBS:
        return VERBS[words[0]], words[2]
    if len(words) == 3 and words[0] == "pod" and words[1] in VERBS:
        return VERBS[words[1]], words[2]
    raise ValueError(USAGE)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--settings":
        print("runpodctl: no settings", file=sys.stderr)
        return 2
    settings = json.loads(Path(args[1]).read_text(encoding="utf-8"))
    try:
        verb, pod_id = parse(args[2:])
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if pod_id != settings["pod_id"]:
        print(f"Error: this pod's key may act only on pod {settings['pod_id']}, not {pod_id}", file=sys.stderr)
        return 1
    base = settings["url"].rstrip("/") + "/v2/pods/" + pod_id
    if verb == "get":
        req = urllib.request.Request(base, method="GET")
    else:
        req = urllib.request.Request(base + "/action", data=json.dumps({"action": verb}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    req.add_header("Authorization", f"Bearer {settings['key']}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read().decode("utf-8")).get("detail")
        except ValueError:
            detail = e.reason
        print(f"Error: {e.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(raw if verb == "get" else DONE[verb] % pod_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
