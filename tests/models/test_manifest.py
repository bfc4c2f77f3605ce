"""The packaged manifest and extra_model_paths.yaml agree with the documented layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from worker.models import FOLDER_KINDS, default_names, load_manifest
from worker.models.manifest import ManifestError, parse_manifest
from worker.models.volume import search_dirs

ROOT = Path(__file__).resolve().parents[2]
W22 = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
W21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"

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
    manifest = load_manifest()
    got = [(e.name, e.folder, e.url, e.size, e.sha256) for e in manifest]
    want = [
        (name, folder, f"https://huggingface.co/{repo}/resolve/main/split_files/{sub}/{name}", size, sha)
        for name, folder, repo, sub, size, sha in EXPECTED
    ]
    assert got == want


def test_default_names_by_role() -> None:
    names = default_names()
    assert names["high_model"] == EXPECTED[0][0] and names["low_model"] == EXPECTED[1][0]
    assert set(names) == {"high_model", "low_model", "text_encoder", "vae", "lightning_high", "lightning_low"}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, '"files" list'),
        ({"files": [{"name": "a.safetensors"}]}, "has no 'role'"),
        ({"files": [{"role": "r", "name": "a", "kind": "checkpoints", "url": "u", "size": 1, "sha256": "0" * 64}]},
         "kind must be one of"),
        ({"files": [{"role": "r", "name": "a", "kind": "vae", "url": "u", "size": 1, "sha256": "xyz"}]},
         "64 hexadecimal"),
        ({"files": [{"role": "r", "name": "../a", "kind": "vae", "url": "u", "size": 1, "sha256": "0" * 64}]},
         "plain file name"),
    ],
)  # fmt: skip
def test_a_broken_manifest_is_refused(data: object, words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        parse_manifest(data)


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
