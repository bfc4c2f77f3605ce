"""The video's size when the job does not give it: the start image's aspect ratio at a resolution preset.

A preset names the short side (``480p``: 480 pixels). The long side follows the image's aspect ratio; both are
rounded to multiples of 16 and kept within the contract's bounds (a very wide image gets a shorter short side
rather than a long side past the maximum). A job that gives one side gets the other from the image; a job
that gives both keeps them. What was chosen is added to the job's adjustments, so the result says it.
"""

from __future__ import annotations

from .schema import MAX_SIDE, MIN_SIDE, RESOLUTIONS, Adjustment, JobInput, round_to_multiple


def _side(value: float) -> int:
    return min(MAX_SIDE, max(MIN_SIDE, round_to_multiple(round(value), 16)))


def preset_size(preset: str, image_width: int, image_height: int) -> tuple[int, int]:
    """(width, height) for an image of that size at ``preset``."""
    short: float = RESOLUTIONS[preset]
    ratio = max(image_width, image_height) / max(1, min(image_width, image_height))
    long = short * ratio
    if long > MAX_SIDE:
        short, long = MAX_SIDE / ratio, MAX_SIDE
    a, b = _side(short), _side(long)
    return (a, b) if image_width <= image_height else (b, a)


def frame(job: JobInput, image_width: int, image_height: int) -> None:
    """Fill in the sides the job left out, from the start image (``image_width`` x ``image_height``)."""
    given = job.model_fields_set
    has_width, has_height = "width" in given, "height" in given
    if has_width and has_height:
        return
    if has_width:
        width, height = job.width, _side(job.width * image_height / max(1, image_width))
        reason = "from the given width and the start image's aspect ratio"
    elif has_height:
        width, height = _side(job.height * image_width / max(1, image_height)), job.height
        reason = "from the given height and the start image's aspect ratio"
    else:
        width, height = preset_size(job.resolution, image_width, image_height)
        reason = f"the start image's aspect ratio ({image_width}x{image_height}) at {job.resolution}"
    for name, used in (("width", width), ("height", height)):
        if name not in given:
            setattr(job, name, used)
            job.adjustments.append(Adjustment(field=name, requested=None, used=used, reason=reason))
