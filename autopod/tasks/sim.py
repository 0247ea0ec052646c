"""The offline simulator: RunPod's API, pods with real SSH servers and ComfyUI, all on this machine."""

from __future__ import annotations

from ..core.flags import number
from ._base import command, exit_quietly


@command(help={
    "world": "YAML/JSON merged over the default account: GPU stock per data center, network volumes, data centers",
    "latency": "seconds of delay before every API answer",
    "fail_every": "every Nth API call answers HTTP 502 (retries must cope); 0 turns it off",
    "hang_every": "every Nth API call hangs past the SDK's 30 s timeout; 0 turns it off",
    "reject_key": "answer 401 to every API call, as RunPod does for a bad key",
    "never_ready": "pods never become ready (pod.create then times out and stops the pod)",
    "graphql_retired": "answer GraphQL with 410 Gone, as RunPod will once it retires GraphQL (REST v2 keeps working)",
    "graphql_retired_status": "how a retired GraphQL answers: 410 (Gone), 404 (no such page) or 200 (a GraphQL "
                              "error saying so); implies --graphql-retired",
    "boot_seconds": "seconds after a (re)start before a pod reports its ports",
    "cold_start": "seconds a new Serverless worker initializes before it takes a job (default 2; 0 turns cold "
                  "starts off)",
    "comfy_ready_after": "seconds after a pod starts before its ComfyUI answers (default 3)",
    "comfy_command": "command that starts a pod's ComfyUI instead of the stand-in; {port} and {host} are filled in",
    "ssh_server": "auto (OpenSSH's sshd where installed), openssh, or python (needs autopod[sim-ssh])",
    "comfy_ws_drop": "every pod's ComfyUI cuts each WebSocket connection instead of sending its (N+1)th message "
                     "(progress must survive drops); 0 turns it off",
    "json": "print one JSON document",
})
def start(c, world=None, latency=None, fail_every=None, hang_every=None, never_ready=False, reject_key=False,
          graphql_retired=False, graphql_retired_status=None, boot_seconds=None, comfy_ready_after=None,
          comfy_command=None, ssh_server="auto", comfy_ws_drop=None, cold_start=None, json=False):
    """Start the offline simulator; every later command uses it until sim.stop. On a running one, apply the fault flags."""
    from ..core.output import emit_outcome, table
    from ..sim.control import fault_settings, start_simulator

    settings = fault_settings(latency=number(latency, "--latency", minimum=0, maximum=3600),
                              fail_every=number(fail_every, "--fail-every", int, minimum=0, maximum=1_000_000),
                              hang_every=number(hang_every, "--hang-every", int, minimum=0, maximum=1_000_000),
                              never_ready=True if never_ready else None,
                              reject_key=True if reject_key else None,
                              graphql_retired=True if graphql_retired else None,
                              graphql_retired_status=graphql_retired_status,
                              boot_seconds=number(boot_seconds, "--boot-seconds", minimum=0, maximum=86400),
                              cold_start=number(cold_start, "--cold-start", minimum=0, maximum=3600))
    ready_after = number(comfy_ready_after, "--comfy-ready-after", minimum=0, maximum=86400)
    ws_drop = number(comfy_ws_drop, "--comfy-ws-drop", int, minimum=0, maximum=1_000_000)
    outcome = start_simulator(world_file=world, settings=settings,
                              comfy_ready_after=3.0 if ready_after is None else ready_after,
                              comfy_command=comfy_command, ssh_server=ssh_server, comfy_ws_drop=ws_drop)
    emit_outcome(outcome, as_json=json)
    if not json and (outcome.data or {}).get("volumes"):
        print("\nNetwork volumes in the simulated account (use one with pod.create --volume-id):")
        print(table(outcome.data["volumes"], [("id", "ID"), ("name", "NAME"), ("size_gb", "SIZE GB"),
                                              ("datacenter", "DATACENTER")]))


@command(help={"json": "print one JSON document"})
def stop(c, json=False):
    """Stop the simulator and its pods; autopod talks to RunPod again."""
    from ..core.output import emit_outcome
    from ..sim.control import stop_simulator

    emit_outcome(stop_simulator(), as_json=json)


@command(help={"json": "print one JSON document"})
def status(c, json=False):
    """Show whether the simulator runs (exit 0) or not (exit 1), with its pods, volumes and fault settings."""
    from ..core.output import dump_json, table
    from ..sim.control import simulator_status

    st = simulator_status()
    if json:
        dump_json(st)
    elif st.get("running"):
        print(f"running at {st['url']} (pid {st['pid']})")
        print(f"Serverless job API: RUNPOD_ENDPOINT_BASE_URL={st['endpoint_base_url']}")
        print(f"faults: {st.get('faults') or 'none'}")
        if st.get("pods"):
            print("\n" + table(st["pods"], [("name", "POD"), ("id", "ID"), ("status", "STATUS")]))
        if st.get("endpoints"):
            print("\n" + table(st["endpoints"], [("name", "ENDPOINT"), ("id", "ID"), ("workers_min", "MIN"),
                                                  ("workers_max", "MAX")]))
        print("\n" + table(st["volumes"], [("id", "VOLUME"), ("name", "NAME"), ("size_gb", "SIZE GB"),
                                           ("datacenter", "DATACENTER")]))
    else:
        print("not running" + (f": {st['problem']}" if st.get("problem") else ""))
    if not st.get("running"):
        exit_quietly(1)
