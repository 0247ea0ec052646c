"""What a simulated worker answers, as worker-comfyui 5.8.5 does: its error strings, inputs as base64 images,
partial results, no images, and the network volume's folders it can see."""

from __future__ import annotations

import base64
import io
import json

import pytest
from sls_fixtures import png_of, sleep_save, sls  # noqa: F401 (sls is a fixture)

from autopod.sim.comfyui.images import decode, save_png, solid


@pytest.fixture
def warm(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    return sls, sls.create()["id"]


def result(warm, inp) -> dict:
    sls, eid = warm
    return sls.wait(eid, sls.run(eid, inp))


def png_b64(width: int, height: int, color: int) -> str:
    buf = io.BytesIO()
    save_png(buf, solid(width, height, color))
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("inp,error", [
    (None, "Please provide input"),
    ({}, "Missing 'workflow' parameter"),
    ("{not json", "Invalid JSON format in input"),
    ({"workflow": {}, "images": [{"name": "a.png"}]}, "'images' must be a list of objects with 'name' and 'image' keys"),
    ({"workflow": {}, "images": "a.png"}, "'images' must be a list of objects with 'name' and 'image' keys"),
])
def test_bad_input_fails_with_worker_comfyuis_text(warm, inp, error):
    done = result(warm, inp)
    assert done["status"] == "FAILED" and done["error"] == error and "output" not in done


def test_input_may_be_a_json_string(warm):
    done = result(warm, json.dumps({"workflow": sleep_save()}))
    assert done["status"] == "COMPLETED" and len(done["output"]["images"]) == 1


def test_validation_errors_become_one_bullet_line_per_node_error(warm):
    wf = sleep_save()
    wf["1"]["inputs"]["width"] = "wide"
    done = result(warm, {"workflow": wf})
    assert done["status"] == "FAILED"
    lines = done["error"].split("\n")
    assert lines[0] == "Workflow validation failed:"
    assert lines[1].startswith("• Node 1 (errors): [{'type': 'invalid_input_type'")
    assert lines[2:] == ["• Node 1 (dependent_outputs): ['3']", "• Node 1 (class_type): EmptyImage"]


def test_a_missing_checkpoint_lists_the_ones_there_are(warm):
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}},
          "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}
    done = result(warm, {"workflow": wf})
    assert done["error"].startswith("Workflow validation failed:\n• Node 1 (errors): [{'type': 'value_not_in_list'")
    assert done["error"].endswith("\n\nNo checkpoint models appear to be available. "
                                  "Please check your model installation.")


def test_a_node_that_fails_at_run_time(warm):
    wf = sleep_save()
    wf["2"] = {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "out of memory"}}
    done = result(warm, {"workflow": wf})
    assert done["status"] == "FAILED" and done["error"] == "Job processing failed"
    assert done["output"] == {"details": [
        "Workflow execution error: Node Type: AutopodFail, Node ID: 2, Message: out of memory\n"]}


def test_images_saved_before_a_failing_node_come_back_with_the_error(warm):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "first"}},
          "3": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "late"}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}}}
    done = result(warm, {"workflow": wf})
    assert done["status"] == "COMPLETED"
    assert [i["filename"] for i in done["output"]["images"]] == ["first_00001_.png"]
    assert done["output"]["errors"] == ["Workflow execution error: Node Type: AutopodFail, Node ID: 3, Message: late\n"]


def test_a_workflow_without_saved_images_completes_with_success_no_images(warm):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    done = result(warm, {"workflow": wf})
    assert done["status"] == "COMPLETED"
    assert done["output"] == {"status": "success_no_images", "images": []}


def test_other_output_kinds_are_dropped(warm):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 1}},
          "2": {"class_type": "AutopodSaveGIF", "inputs": {"images": ["1", 0], "filename_prefix": "g"}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "still"}}}
    done = result(warm, {"workflow": wf})
    # worker-comfyui returns the history's "images" key only: the GIF ("gifs") is not there
    assert [i["filename"] for i in done["output"]["images"]] == ["still_00001_.png", "still_00002_.png"]


def test_input_images_are_uploaded_with_or_without_a_data_uri_prefix(warm):
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out"}}}
    for prefix, color in (("data:image/png;base64,", 0x00FF00), ("", 0x0000FF)):
        done = result(warm, {"workflow": wf, "images": [{"name": "in.png", "image": prefix + png_b64(6, 4, color)}]})
        assert done["status"] == "COMPLETED", done
        png = decode(png_of(done["output"]["images"][0]))
        assert (png.width, png.height) == (6, 4)
        assert png.rgb[:3] == color.to_bytes(3, "big")  # the new upload replaced the old one (overwrite)


def test_bad_base64_fails_the_upload(warm):
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    done = result(warm, {"workflow": wf, "images": [{"name": "in.png", "image": "abc"}]})
    assert done["status"] == "FAILED" and done["error"] == "Failed to upload one or more input images"
    assert done["output"]["details"][0].startswith("Error decoding base64 for in.png: ")


def test_workers_see_the_volume_only_through_worker_comfyuis_folders(sls):
    """/runpod-volume/models/{checkpoints,clip,unet,...} are read; models/text_encoders, models/diffusion_models
    and a pod's ComfyUI folder (runpod-slim/ComfyUI/models) on the same volume are not."""
    sls.control(settings={"sls_cold_start_s": 0})
    vols = sls.call("GET", "/v2/network-volumes").json()["networkVolumes"]
    vol = next(v for v in vols if v["name"] == "comfy-models")
    root = sls.standin.serverless._volume_dir(vol["id"])
    for rel in ("models/checkpoints/worker.safetensors", "models/clip/enc-clip.safetensors",
                "models/text_encoders/enc-te.safetensors", "models/unet/dm-unet.safetensors",
                "models/diffusion_models/dm-dm.safetensors", "runpod-slim/ComfyUI/models/checkpoints/pod.safetensors"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\0")
    eid = sls.create(networkVolumes=[vol["id"]])["id"]

    def errors(ckpt: str, clip: str, unet: str) -> str:
        wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
              "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip, "type": "stable_diffusion"}},
              "3": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
              "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["2", 0]}},
              "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "6": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                         "sampler_name": "euler", "scheduler": "normal",
                                                         "positive": ["4", 0], "negative": ["4", 0],
                                                         "latent_image": ["5", 0], "denoise": 1.0}},
              "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
              "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "v"}}}
        done = sls.wait(eid, sls.run(eid, {"workflow": wf}))
        assert done["status"] == "FAILED"
        return done["error"]

    seen = errors("worker.safetensors", "enc-clip.safetensors", "dm-unet.safetensors")
    # every name passed validation; the model-free ComfyUI then cannot execute a loader
    assert seen.startswith("Job processing failed") and "validation" not in seen
    unseen = errors("pod.safetensors", "enc-te.safetensors", "dm-dm.safetensors")
    assert unseen.startswith("Workflow validation failed:")
    for node in ("1", "2", "3"):
        assert f"• Node {node} (errors): [{{'type': 'value_not_in_list'" in unseen
    assert unseen.endswith("\n\nAvailable checkpoint models: worker.safetensors")
