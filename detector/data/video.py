"""Frames from a video file with PyAV (FFmpeg bindings), for Celeb-DF.

Which frames: for ``k`` frames per video out of ``n``, frame indices ``floor((i + 0.5) * n / k)`` for
``i = 0 .. k-1``, i.e. the centres of ``k`` equal stretches; one frame per video is the middle frame.
The middle avoids fade-ins and the first frames of a clip, where face swaps are often unstable.
Frames are decoded in order (no seeking), so the index is exact whatever the keyframe layout.
"""

from __future__ import annotations

import numpy as np


class VideoDecodeError(ValueError):
    """A video has no decodable frame; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def frame_indices(n_frames: int, k: int) -> list[int]:
    """Indices of the ``k`` frames taken from a video of ``n_frames`` (fewer if the video is shorter).

    >>> frame_indices(300, 1), frame_indices(300, 3), frame_indices(2, 5)
    ([150], [50, 150, 250], [0, 1])
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_frames <= 0:
        return []
    return sorted({int((i + 0.5) * n_frames / k) for i in range(k)})


def _decode_at(path: str, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    import av

    got: dict[int, np.ndarray] = {}
    count = 0
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        last = max(wanted) if wanted else -1
        for frame in container.decode(stream):
            if count in wanted:
                got[count] = frame.to_ndarray(format="rgb24")
            count += 1
            if count > last and len(got) == len(wanted):
                break
    return got, count


def read_frames(path: str, k: int = 1, *, name: str = "") -> list[tuple[int, np.ndarray]]:
    """``[(frame index, uint8 array (H, W, 3))]`` for the frames :func:`frame_indices` picks.

    The container's frame count is used when it has one; when it is missing or wrong (a damaged or
    truncated file), the frames are counted by decoding and the positions recomputed.
    """
    import av

    name = name or path
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(name, "no video stream")
            declared = int(container.streams.video[0].frames or 0)
        wanted = frame_indices(declared, k) if declared > 0 else []
        got, count = _decode_at(path, set(wanted)) if wanted else ({}, -1)
        if not wanted or len(got) < len(wanted):
            if count < 0:  # no declared count: count by decoding
                _, count = _decode_at(path, set())
            wanted = frame_indices(count, k)
            got, _ = _decode_at(path, set(wanted))
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, IndexError) as e:
        # FFmpeg's messages end with the absolute path; the name already says which file
        detail = getattr(e, "strerror", None) or str(e)
        raise VideoDecodeError(name, f"cannot decode video: {type(e).__name__}: {detail}") from None
    if not got:
        raise VideoDecodeError(name, "no decodable frame")
    return sorted(got.items())
