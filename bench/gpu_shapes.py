"""The shapes the GPU benchmark works with, written once: the published config of the Wan2.2 A14B experts (as
ComfyUI's ``WanModel`` takes it) and the Lightning LoRAs' rank.

Imported by ``gpu_models.py`` (run with ComfyUI's Python, it writes the weights) and by ``gpu_report.py`` (the
FLOP floor), so that the weights measured and the arithmetic printed beside them come from the same numbers.
Plain Python: no torch, no worker.
"""

from __future__ import annotations

WAN22_A14B: dict[str, object] = {
    "model_type": "t2v",
    "in_dim": 36,
    "out_dim": 16,
    "dim": 5120,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "text_dim": 4096,
    "num_heads": 40,
    "num_layers": 40,
}
"""Each 14B expert of Wan2.2 A14B I2V. ComfyUI detects these experts as ``model_type`` t2v with ``in_dim`` 36 (16
noise + 4 mask + 16 image-latent channels; Wan2.2 has no CLIP image embedding), and ``num_heads`` as dim // 128."""

TEXT_LEN = 512
"""UMT5 tokens each expert's cross-attention reads (ComfyUI's ``WanModel`` pads the text to ``text_len`` 512)."""
PATCH = (1, 2, 2)
"""The experts' patch (frames, height, width), in latent cells."""
VAE_STRIDE = (4, 8, 8)
"""The Wan 2.1 VAE's compression: 4n+1 frames become n+1 latent frames, 8x8 pixels one latent cell."""
LORA_RANK = 64
"""The lightx2v 4-step LoRAs' rank."""
