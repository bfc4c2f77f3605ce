"""``python -m worker.client``: the same as the ``wan-video`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
