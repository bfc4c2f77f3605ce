"""docker-compose.yml, .runpod/hub.json and .runpod/tests.json: shape, and agreement with the code they deploy."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from worker.config import Settings
from worker.settingsdoc import env_name

from .harness import REPO, START_SH

pytestmark = pytest.mark.timeout(30)

HUB = json.loads((REPO / ".runpod" / "hub.json").read_text(encoding="utf-8"))
TESTS = json.loads((REPO / ".runpod" / "tests.json").read_text(encoding="utf-8"))
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")

POOLS_48_GB_OR_MORE = {"AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141", "BLACKWELL_96"}
POOLS_24_TO_32_GB = {"AMPERE_24", "ADA_24", "ADA_32_PRO"}

# start.sh settings that only point at the image's own layout or stand in for commands in tests: the image sets
# them, and a deployment has no reason to.
INTERNAL = {
    "PYTHON",
    "APP_DIR",
    "COMFY_DIR",
    "COMFY_CMD",
    "WORKER_CMD",
    "EXTRA_MODEL_PATHS",
    "PYTHONUNBUFFERED",
}
# Values the image sets with ENV: the Hub's default must repeat the image's value.
IMAGE_SET = {"COMFY_INPUT_DIR", "COMFY_OUTPUT_DIR", "WORKFLOWS_DIR"}


def start_sh_defaults() -> dict[str, str]:
    """NAME -> default for every ``NAME=${NAME:-default}`` (or ``${NAME-default}``) line of start.sh."""
    found = {}
    for name, default in re.findall(
        r"^(?:export )?([A-Z][A-Z0-9_]*)=\$\{\1:?-([^}]*)\}$", START_SH.read_text(encoding="utf-8"), re.M
    ):
        found[name] = default
    return found


def config_names() -> set[str]:
    return {env_name(field) for field in Settings.model_fields.values()}


def hub_env() -> dict[str, dict[str, Any]]:
    return {item["key"]: item for item in HUB["config"]["env"]}


def as_env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------- compose


def test_compose_runs_one_gpu_service_with_the_volume_and_the_local_api() -> None:
    assert list(COMPOSE["services"]) == ["worker"]
    service = COMPOSE["services"]["worker"]
    assert service["build"]["context"] == "."
    assert "./models:/runpod-volume" in service["volumes"]
    assert any(
        str(port).endswith(":8000") and str(port).split(":")[-2] == "8000" for port in service["ports"]
    )
    assert service["environment"]["SERVE_API_LOCALLY"] == "true"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "latest" not in json.dumps(COMPOSE)


def test_compose_keeps_tokens_out_of_the_file() -> None:
    for value in COMPOSE["services"]["worker"]["environment"].values():
        assert not re.fullmatch(r"hf_\w{10,}", str(value))
    assert COMPOSE["services"]["worker"]["environment"].get("HF_TOKEN") == "${HF_TOKEN:-}"


# --------------------------------------------------------------------------------------------- hub.json


def test_hub_metadata() -> None:
    assert HUB["title"] and HUB["description"]
    assert HUB["type"] == "serverless"
    assert HUB["category"] == "video"
    config = HUB["config"]
    assert config["runsOn"] == "GPU"
    assert config["gpuCount"] == 1
    assert isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] >= 40
    pools = config["gpuIds"].split(",")
    assert set(pools) <= POOLS_48_GB_OR_MORE | POOLS_24_TO_32_GB
    # 48 GB or more first (preferred), 24 GB possible.
    big = [i for i, p in enumerate(pools) if p in POOLS_48_GB_OR_MORE]
    small = [i for i, p in enumerate(pools) if p in POOLS_24_TO_32_GB]
    assert big and small and max(big) < min(small)
    # The image's CUDA runtime sets the oldest CUDA version a host may offer.
    cuda = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)", DOCKERFILE, re.M)
    assert cuda
    oldest = (int(cuda.group(1)), int(cuda.group(2)))
    for version in config["allowedCudaVersions"]:
        major, minor = (int(x) for x in version.split("."))
        assert (major, minor) >= oldest, version


def test_hub_env_entries_are_well_formed() -> None:
    keys = [item["key"] for item in HUB["config"]["env"]]
    assert len(keys) == len(set(keys)), "a variable is listed twice"
    for item in HUB["config"]["env"]:
        spec = item["input"]
        assert spec["name"] and spec["description"], item["key"]
        assert spec["type"] in {"string", "number", "boolean"}, item["key"]
        default = spec.get("default")
        if spec["type"] == "boolean":
            assert isinstance(default, bool) and spec["trueValue"] == "true" and spec["falseValue"] == "false"
        elif spec["type"] == "number":
            assert isinstance(default, int | float) and not isinstance(default, bool), item["key"]
        else:
            assert isinstance(default, str), item["key"]
        if "options" in spec:
            assert default in [option["value"] for option in spec["options"]], item["key"]


def test_every_environment_variable_is_documented_in_the_hub() -> None:
    documented = set(hub_env())
    wanted = (set(start_sh_defaults()) - INTERNAL) | config_names()
    assert wanted - documented == set(), "undocumented in .runpod/hub.json"
    assert documented - wanted == set(), "documented but read by nothing"


def test_hub_defaults_of_image_settings_repeat_the_image() -> None:
    for name in sorted(IMAGE_SET):
        value = hub_env()[name]["input"]["default"]
        if name == "WORKFLOWS_DIR":
            assert value == "/app/workflows"  # the code's default inside the image (/app/src/worker/..)
            continue
        assert re.search(rf"\b{name}={re.escape(value)}(\s|$)", DOCKERFILE), name


def test_hub_defaults_of_start_script_settings_are_start_sh_defaults() -> None:
    env = hub_env()
    for name, default in start_sh_defaults().items():
        if name in INTERNAL or name in IMAGE_SET or "$" in default:
            continue
        value = as_env_value(env[name]["input"]["default"])
        if re.fullmatch(r"\d+(\.\d+)?", default):
            assert float(value) == float(default), name
        else:
            assert value == default, name


# --------------------------------------------------------------------------------------------- tests.json


def test_hub_tests_are_small_valid_i2v_jobs_one_interpolated() -> None:
    from worker.framing import frame
    from worker.schema import parse_job_input

    assert [case["name"] for case in TESTS["tests"]] == ["i2v_small", "i2v_interpolated"]
    for case in TESTS["tests"]:
        job = parse_job_input(case["input"])
        frame(job, 240, 416)  # the test image's size
        assert job.end_image_url is None and job.end_image_base64 is None and job.end_image_path is None
        assert job.width * job.height <= 480 * 480 and job.output_length <= 33
        assert isinstance(case["timeout"], int) and 60_000 <= case["timeout"] <= 1_200_000
    interpolated = parse_job_input(TESTS["tests"][1]["input"])
    assert interpolated.interpolates and "height" not in TESTS["tests"][1]["input"]
    config = TESTS["config"]
    assert config["gpuCount"] == 1
    assert config["gpuTypeId"].startswith("NVIDIA ")
    assert set(config["allowedCudaVersions"]) <= set(HUB["config"]["allowedCudaVersions"])
