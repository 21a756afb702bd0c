"""What an input file may hold before it is decoded or used: a bounded number of pixels, finite values.

A file states its size in a header of a few bytes (a 467-byte PNG can declare 100000 x 100000
pixels), so every reader checks that size against :func:`max_pixels` before it decodes anything
whole. The limit is a share of the memory this process may still take, or the commands'
``max_pixels`` key. Chunked readers (Zarr, HDF5, tiled TIFF into a Zarr output) read windows and
need no such limit.

NaN and infinite pixels are refused with the first position that holds one: a network given one
NaN returns NaN for its whole receptive field, silently.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    import resource
except ImportError:  # Windows: no address-space limit to read
    resource = None  # type: ignore[assignment]

from unet_train.errors import ConfigError, DataError

# An image read whole lives on as several float32 copies (normalised input, tiled logits, blend weights,
# probabilities, augmentation buffers): its pixel values may take a 32nd of the free memory, 8 such copies.
FLOAT32_COPIES = 8
FALLBACK_MEMORY = 8 * 2**30  # where the free memory cannot be read (not Linux, no sysconf)
# A container's memory limit and use: cgroup v2, then v1.
CGROUP_FILES = (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))

_max_pixels: int | None = None  # set by the commands from their max_pixels key; None: from the free memory


def set_max_pixels(value: float | None) -> None:
    """The commands' ``max_pixels`` key: the most pixel values an image read whole may hold (None: from memory)."""
    global _max_pixels
    whole = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if value is not None and not (whole and value > 0):
        raise ConfigError(
            f"max_pixels={value!r} must be a positive whole number of pixel values (1e10 works), or null."
        )
    _max_pixels = None if value is None else int(value)


def _read_int(path: str, key: str | None = None) -> int | None:
    """An integer from a /proc or /sys file: the whole content, or the line starting with ``key`` (kB)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if key is None:
        return int(text) if text.strip().isdigit() else None
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return None


def available_memory() -> int:
    """Bytes this process may still allocate: the least of the free memory (``MemAvailable``), the cgroup's
    headroom (v2 or v1) and the address space left under ``RLIMIT_AS``."""
    candidates = [_read_int("/proc/meminfo", "MemAvailable:")]
    for limit, usage in CGROUP_FILES:
        cap, used = _read_int(f"/sys/fs/cgroup/{limit}"), _read_int(f"/sys/fs/cgroup/{usage}")
        if cap is not None and used is not None and cap < 2**60:  # v1 writes "unlimited" as ~2**63
            candidates.append(max(cap - used, 0))
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else -1
    if soft >= 0 and soft != getattr(resource, "RLIM_INFINITY", -1):
        mapped = _read_int("/proc/self/status", "VmSize:") or 0
        candidates.append(max(soft - mapped, 0))
    known = [c for c in candidates if c is not None]
    if not known:  # not Linux: the free physical pages where the system tells them
        try:
            known = [int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))]
        except (ValueError, OSError, AttributeError):
            known = [FALLBACK_MEMORY]
    return min(known)


def max_pixels() -> tuple[int, str]:
    """The most pixel values an image read whole may hold, and where that figure comes from."""
    if _max_pixels is not None:
        return _max_pixels, f"max_pixels={_max_pixels}"
    memory = available_memory()
    return memory // (4 * FLOAT32_COPIES), f"1/{4 * FLOAT32_COPIES} of the {memory / 2**30:.1f} GiB of free memory"


def check_pixels(where: str | Path, shape: Sequence[int], hint: str = "") -> None:
    """Refuse an image of ``shape`` (every axis counts: slices, height, width, channels) that is over the limit.

    Called on the size a header declares, before any pixel is decoded.
    """
    count = math.prod(int(s) for s in shape)
    limit, source = max_pixels()
    if count > limit:
        raise DataError(
            f"{where} is {' x '.join(str(int(s)) for s in shape)} = {count:,} pixel values, more than can be read "
            f"whole ({limit:,}: {source}); {hint}crop or tile the file, or raise the limit with max_pixels={count}."
        )


def first_nonfinite(array: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinite value of a float array, or None (integer arrays have none)."""
    if array.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))


def describe_position(index: Sequence[int], axes: str) -> str:
    """``y=10, x=12`` for an index and its axis letters (axes beyond the letters are left out)."""
    return ", ".join(f"{axis}={int(i)}" for axis, i in zip(axes, index))


def check_finite(
    array: np.ndarray, where: str | Path, axes: str, fix: str = "fix or remove the file", origin: Sequence[int] = ()
) -> None:
    """Refuse NaN/inf pixels, naming the first one's position on ``axes`` (e.g. ``yxc``); ``origin`` is added to
    the index (a window's corner in the whole image)."""
    index = first_nonfinite(array)
    if index is not None:
        value = array[index]
        position = [i + o for i, o in zip(index, [*origin, *[0] * len(index)])]
        raise DataError(
            f"{where} has NaN or infinite pixels (the first, {value}, at {describe_position(position, axes)}); {fix}."
        )


def reason(exc: BaseException) -> str:
    """An exception as the end of a one-line message: some (MemoryError) carry no text of their own."""
    if isinstance(exc, MemoryError):
        return "out of memory while decoding it (raise the memory, or crop or tile the file)"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
