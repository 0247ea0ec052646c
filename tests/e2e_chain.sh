#!/usr/bin/env bash
# The chain a user's script runs, end to end, against the offline simulator:
# create with a volume, tunnel, ComfyUI status and info, stop (tunnel gone),
# start (new SSH port, tunnel resolved again), kill. The first part runs twice:
# the second pass must be all `ok` with the same pod. Every exit code is checked
# and every --json output goes through a JSON parser.
#
# Needs `autopod` on PATH, a scratch AUTOPOD_HOME and an SSH key in ~/.ssh. AUTOPOD_RUNPOD_API picks
# RunPod's API (graphql, rest, auto); E2E_SIM_FLAGS adds sim.start flags (--graphql-retired).
set -u -o pipefail

PY=${PYTHON:-python3}
fail() { echo "e2e FAIL: $*" >&2; exit 1; }
step() { echo "--- $*" >&2; }

# run WANT_CODE CMD... : run, keep stdout in $OUT, check the exit code.
run() {
    local want=$1; shift
    OUT=$("$@"); local got=$?
    [ "$got" -eq "$want" ] || fail "exit $got, wanted $want: $*"
}
# field PATH : read one value from the JSON in $OUT (a.b.0.c); fails on bad JSON.
field() {
    printf '%s' "$OUT" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1].split(".") if sys.argv[1] else []:
    d = d[int(k)] if isinstance(d, list) else d[k]
print(json.dumps(d) if isinstance(d, (dict, list)) else d)' "$1" || fail "bad JSON or no '$1' in: $OUT"
}
expect_field() { local v; v=$(field "$1"); [ "$v" = "$2" ] || fail "$1 is '$v', wanted '$2'"; }

step "sim.start"
# shellcheck disable=SC2086  # E2E_SIM_FLAGS is a list of flags (--graphql-retired)
run 0 autopod sim.start --comfy-ready-after 2 ${E2E_SIM_FLAGS:-} --json
expect_field status changed
run 0 autopod volume.list --json
VOL=$(printf '%s' "$OUT" | "$PY" -c 'import json,sys; print([v["id"] for v in json.load(sys.stdin) if v["name"] == "comfy-models"][0])') \
    || fail "no comfy-models volume"

step "bad input exits 2 and creates nothing"
run 2 autopod pod.create --name e2e --gpu "No Such GPU" --volume-id "$VOL" --json
run 2 autopod pod.create --name e2e --volume-id zzzzzzzzzz --json
run 0 autopod pod.list --json
expect_field "" "[]"

POD=""
for pass in 1 2; do
    if [ "$pass" = 1 ]; then want=changed; else want=ok; fi
    step "pass $pass: pod.create, tunnel.start, comfy.status, comfy.info (all $want)"
    run 0 autopod pod.create --name e2e --volume-id "$VOL" --timeout 120 --json
    expect_field status "$want"
    id=$(field pod.id)
    [ -z "$POD" ] || [ "$POD" = "$id" ] || fail "pass $pass made a new pod $id (had $POD)"
    POD=$id
    run 0 autopod tunnel.start --pod e2e --json
    expect_field status "$want"
    PORT=$(field tunnel.local_port)
    run 0 autopod comfy.status --pod e2e --wait 60 --json
    expect_field ready True
    run 0 autopod comfy.info --pod e2e --json
    expect_field comfyui_version 0.3.64
    URL=$(field url)
    case "$URL" in *":$PORT"*) ;; *) fail "comfy.info URL $URL is not the tunnel's port $PORT";; esac
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/system_stats", timeout=10).read()' "$URL" \
        || fail "ComfyUI does not answer at $URL"
    run 0 autopod pod.list --json
    n=$(printf '%s' "$OUT" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))')
    [ "$n" = 1 ] || fail "pass $pass: $n pods, wanted 1"
done

step "pod.ssh runs commands over the direct endpoint and passes their exit code on"
run 0 autopod pod.ssh --pod e2e --command "echo from-the-pod" --json
expect_field stdout from-the-pod
run 3 autopod pod.ssh --pod e2e --command "exit 3"

run 0 autopod pod.info --pod e2e --json
SSH1=$(field ssh_direct.port)

step "pod.stop: the tunnel goes with it"
run 0 autopod pod.stop --pod e2e --json
expect_field status changed
run 1 autopod tunnel.status --pod e2e
run 0 autopod pod.stop --pod e2e --json
expect_field status ok

step "pod.start: a new SSH port, the tunnel is resolved again"
run 0 autopod pod.start --pod e2e --json
expect_field status changed
run 0 autopod pod.wait --pod e2e --timeout 60
run 0 autopod pod.info --pod e2e --json
SSH2=$(field ssh_direct.port)
[ "$SSH1" != "$SSH2" ] || fail "the SSH port did not change across stop/start ($SSH1)"
run 0 autopod comfy.status --pod e2e --wait 60 --json
expect_field ready True
run 0 autopod tunnel.status --pod e2e --json

step "comfy.run in the simulated pod: an override, a sweep, outputs on disk, the ledger"
WORK=$(mktemp -d)
cat > "$WORK/hello.json" <<'JSON'
{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 16711680},
       "_meta": {"title": "Canvas"}},
 "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": 0.2, "steps": 4}},
 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "hello"}}}
JSON
run 2 autopod comfy.run "$WORK/hello.json" "$WORK/missing.json" --pod e2e --json
run 2 autopod comfy.run "$WORK/hello.json" --pod e2e --set Canvas.width=0 --json
run 0 autopod comfy.run "$WORK/hello.json" --pod e2e --set Canvas.width=128 --sweep 3.filename_prefix=a,b \
    --output-dir "$WORK/out" --json
expect_field counts.success 2
[ "$(find "$WORK/out" -name '*.png' ! -name contact.png | wc -l)" -eq 2 ] || fail "expected 2 PNGs in $WORK/out"
[ -f "$(field sheet.sheet)" ] || fail "expected the batch's contact sheet"
run 0 autopod comfy.jobs --json
expect_field 0.done 2
run 0 autopod comfy.run --resume "$(field 0.id)" --pod e2e --json
expect_field status ok

step "pod.kill, twice"
run 0 autopod pod.kill --pod e2e --yes --json
expect_field status changed
run 0 autopod pod.kill --pod e2e --yes --json
expect_field status ok
run 1 autopod tunnel.status --pod e2e
run 0 autopod pod.list --json
expect_field "" "[]"

step "sim.stop"
run 0 autopod sim.stop --json
run 1 autopod sim.status
echo "e2e OK" >&2
