"""The packaged manifest and extra_model_paths.yaml agree with the documented layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from worker.models.manifest import ManifestError, default_names, find, load_manifest, parse_manifest
from worker.models.volume import FOLDER_KINDS, search_dirs

ROOT = Path(__file__).resolve().parents[2]
W22 = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
W21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
INTERPOLATION = "https://huggingface.co/Comfy-Org/frame_interpolation/resolve/main/frame_interpolation/"
ON_DEMAND = [
    ("interpolation_model", "film_net_fp16.safetensors"),
    (None, "rife_v4.25.safetensors"),
    (None, "rife_v4.25_heavy.safetensors"),
    (None, "rife_v4.25_lite.safetensors"),
    (None, "rife_v4.26.safetensors"),
    (None, "rife_v4.26_heavy.safetensors"),
]

EXPECTED = [
    ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "models", W22, "diffusion_models", 14294742832,
     "6122e79d55e0f235698d11d657f3b196c5273c830da00b2b013c5a048d5e6a42"),
    ("wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "models", W22, "diffusion_models", 14294742832,
     "5471a457b6ac404202a5fbe6c11595a3d5641fc766b00f38763f72303fffc21e"),
    ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders", W21, "text_encoders", 6735906897,
     "c3355d30191f1f066b26d93fba017ae9809dce6c627dda5f6a66eaa651204f68"),
    ("wan_2.1_vae.safetensors", "vae", W22, "vae", 253815318,
     "2fc39d31359a4b0a64f55876d8ff7fa8d780956ae2cb13463b0223e15148976b"),
    ("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors", "loras", W22, "loras", 1226977424,
     "d176c808d6fc461999b68e321efcb7501b20b8c3797523ed0df14f7d1deff11e"),
    ("wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors", "loras", W22, "loras", 1226977424,
     "024f21de095bc8fad9809ded3e9e49a2e170dcf27075da8145ba7d60d8aab7f9"),
]  # fmt: skip


def test_the_packaged_manifest_lists_the_six_defaults() -> None:
    manifest = [e for e in load_manifest() if not e.on_demand]
    got = [(e.name, FOLDER_KINDS[e.kind], e.url, e.size, e.sha256) for e in manifest]
    want = [
        (name, folder, f"https://huggingface.co/{repo}/resolve/main/split_files/{sub}/{name}", size, sha)
        for name, folder, repo, sub, size, sha in EXPECTED
    ]
    assert got == want


def test_the_interpolation_models_are_fetched_on_demand_from_the_hub() -> None:
    entries = [e for e in load_manifest() if e.on_demand]
    got = [(e.role, e.name, e.kind, FOLDER_KINDS[e.kind], e.url, e.size, e.sha256) for e in entries]
    want = [
        (role, name, "frame_interpolation", "frame_interpolation", INTERPOLATION + name, None, None)
        for role, name in ON_DEMAND
    ]
    assert got == want
    assert find(entries, "frame_interpolation", "rife_v4.26.safetensors") == entries[4]
    assert find(entries, "frame_interpolation", "nothing.safetensors") is None
    assert not find(load_manifest(), "vae", "wan_2.1_vae.safetensors").on_demand  # type: ignore[union-attr]


def test_default_names_by_role() -> None:
    names = default_names()
    assert names["high_model"] == EXPECTED[0][0] and names["low_model"] == EXPECTED[1][0]
    assert names["interpolation_model"] == "film_net_fp16.safetensors"
    assert set(names) == {
        "high_model",
        "low_model",
        "text_encoder",
        "vae",
        "lightning_high",
        "lightning_low",
        "interpolation_model",
    }


def test_an_on_demand_entry_may_leave_role_size_and_sha256_open() -> None:
    base = {"name": "a.safetensors", "kind": "frame_interpolation", "url": "u"}
    (entry,) = parse_manifest({"files": [{**base, "fetch": "on_demand"}]})
    assert (entry.role, entry.size, entry.sha256, entry.on_demand) == (None, None, None, True)
    (entry,) = parse_manifest(
        {"files": [{**base, "role": None, "size": 7, "sha256": "A" * 64, "fetch": "on_demand"}]}
    )
    assert (entry.size, entry.sha256) == (7, "a" * 64)
    assert default_names((entry,)) == {}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, "files"),
        ({"files": [{"name": "a.safetensors"}]}, "files.0.kind: Field required"),
        ({"files": [{"role": "r", "name": "a", "kind": "checkpoints", "url": "u", "size": 1, "sha256": "0" * 64}]},
         "kind: Input should be 'diffusion_models', 'loras'"),
        ({"files": [{"role": "r", "name": "a", "kind": "vae", "url": "u", "size": 1, "sha256": "xyz"}]},
         "sha256: String should match pattern"),
        ({"files": [{"role": "r", "name": "../a", "kind": "vae", "url": "u", "size": 1, "sha256": "0" * 64}]},
         "name: String should match pattern"),
        ({"files": [{"role": "r", "name": "a", "kind": "vae", "url": "u", "size": 0, "sha256": "0" * 64}]},
         "size: Input should be greater than 0"),
        ({"files": [{"role": "r", "name": "a", "kind": "vae", "url": "u", "size": None, "sha256": "0" * 64}]},
         'role, size and sha256 may be null only with "fetch": "on_demand"'),
        ({"files": [{"role": None, "name": "a", "kind": "vae", "url": "u", "size": 1, "sha256": "0" * 64}]},
         "may be null only"),
        ({"files": [{"name": "a", "kind": "vae", "url": "u", "fetch": "later"}]}, "fetch: Input should be"),
        ({"files": [{"name": "a", "kind": "vae", "url": "u", "fetch": "on_demand", "sha256": "xyz"}]},
         "sha256: String should match"),
        ({"files": [{"role": "vae", "name": n, "kind": "vae", "url": "u", "fetch": "on_demand"}
                    for n in ("a", "b")]},
         "a role two files"),
        ({"files": [{"name": "a", "kind": "vae", "url": u, "fetch": "on_demand"} for u in ("u", "v")]},
         "lists a file twice"),
    ],
)  # fmt: skip
def test_a_broken_manifest_is_refused(data: object, words: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    assert words in str(info.value)


def test_a_manifest_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "bad.json")


def test_the_packaged_manifest_is_read_once() -> None:
    assert load_manifest() is load_manifest()


def test_the_role_table_and_the_name_rule_import_no_download_library() -> None:
    code = (
        "import sys, worker.models, worker.models.roles, worker.models.names, worker.schema; "
        "print(sorted({'huggingface_hub', 'requests', 'filelock', 'tenacity', 'worker.config'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_extra_model_paths_map_both_layouts_as_the_worker_searches_them() -> None:
    config = yaml.safe_load((ROOT / "extra_model_paths.yaml").read_text())
    base = Path("/runpod-volume")
    mapped: dict[str, list[Path]] = {}
    for source in config.values():
        assert source["base_path"] == "${VOLUME_ROOT}"  # start.sh exports it; ComfyUI expands it
        for kind, paths in source.items():
            if kind != "base_path":
                mapped.setdefault(kind, []).extend(base / p for p in str(paths).split())
    assert set(mapped) == set(FOLDER_KINDS)
    for kind in FOLDER_KINDS:
        assert mapped[kind] == search_dirs(base, kind), kind
