"""wan-worker: a RunPod serverless worker for Wan2.2 A14B I2V and FLF2V through ComfyUI."""

__version__ = "0.1.0"
