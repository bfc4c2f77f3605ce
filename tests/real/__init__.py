"""The real-ComfyUI test tier: see test_real_comfyui.py."""
