"""Device, precision, seeding: the settings in ``configs/trainer`` turned into torch state."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from unet_train.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def channels_last_format(ndim: int) -> torch.memory_format:
    """The channels-last memory format of an ``ndim``-D tensor: NHWC for images, NDHWC for volumes."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim, torch.contiguous_format)


def to_channels_last(module: ModuleT) -> ModuleT:
    """``module.to(memory_format=...)``: 4-D weights in NHWC order, a 3D model's 5-D weights in NDHWC
    (torch's type stubs leave ``memory_format`` out of ``Module.to``, hence this one typed place)."""
    volumetric = any(p.dim() == 5 for p in module.parameters())
    fmt = torch.channels_last_3d if volumetric else torch.channels_last
    return module.to(memory_format=fmt)  # type: ignore[call-overload]


def mps_available() -> bool:
    """Whether an Apple GPU (Metal Performance Shaders) is usable by this torch."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then an Apple GPU (MPS), then the CPU; asking for an absent device is a config error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"trainer.device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu (or auto).")
    if device.type == "mps" and not mps_available():
        raise ConfigError(
            f"trainer.device={name} but no Apple GPU (MPS) is available here (it needs macOS 12.3+ on Apple silicon "
            "or an AMD GPU, and a torch built with MPS); use trainer.device=cpu (or auto)."
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"trainer.device={name!r} is not supported; use auto, cpu, cuda, cuda:N or mps.")
    return device


def auto_precision(device: torch.device) -> str:
    """What ``trainer.precision=auto`` means on ``device``: bf16 where the hardware runs it natively, else 32.

    CUDA: bf16 on GPUs that support it (Ampere and newer). CPU: bf16 where oneDNN has AVX-512 BF16 or
    AMX (:func:`cpu_has_fast_bf16`; ``scripts/compare_precision.py`` is the quality check behind this).
    MPS: 32 (bf16 there is untested by this project).
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "32"
    return "32"


def resolve_precision(precision: str | int, device: torch.device, quiet: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``trainer.precision`` (None for full float32); ``auto`` is :func:`auto_precision`
    (logged unless ``quiet``: a CPU with native bf16 measures it, engine/autotune.py, and says so then)."""
    key = str(precision)
    if key == "auto":
        key = auto_precision(device)
        if not quiet:
            log.info("trainer.precision=auto: %s on %s", "bfloat16 autocast" if key == "bf16" else "float32", device)
    if key not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not known; choose auto, 32, bf16 or 16.")
    dtype = PRECISIONS[key]
    if dtype is torch.float16 and device.type == "cpu":
        raise ConfigError("trainer.precision=16 needs a CUDA or MPS device; on CPU use trainer.precision=bf16 or 32.")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("This GPU has no bfloat16 support; use trainer.precision=16 (with loss scaling) or 32.")
    if dtype is torch.bfloat16 and device.type == "mps" and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise ConfigError(
            "trainer.precision=bf16 on an Apple GPU needs macOS 14 or newer; use trainer.precision=16 or 32."
        )
    if dtype is torch.bfloat16 and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning(
            "trainer.precision=bf16 on a CPU without AVX-512 BF16 or AMX: it runs, emulated, and is usually "
            "slower than trainer.precision=32."
        )
    return dtype


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX-512 BF16 or AMX); bf16 autocast pays off then."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers (torch >= 2.1 on x86): assume no rather than fail
        return False


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    # Settings that were ``auto`` on a CPU and are to be measured (engine/autotune.py): "channels_last",
    # "precision". Until then the fields hold the unmeasured guess (channels-last; bf16 where native).
    auto: tuple[str, ...] = ()

    @property
    def precision(self) -> str:
        """The precision in ``trainer.precision``'s words (``auto`` resolved): 32, bf16 or 16."""
        return next(key for key, dtype in PRECISIONS.items() if dtype is self.autocast_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling only for float16, where small gradients would underflow."""
        return torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype is torch.float16)

    def to_device(self, tensor: torch.Tensor, image: bool = False) -> torch.Tensor:
        """Copy a batch tensor to the device; images go channels-last when asked."""
        # Asynchronous from pinned memory (CUDA); a plain copy on the CPU and from unpinned memory (MPS).
        tensor = tensor.to(self.device, non_blocking=True)
        if image and self.channels_last:
            tensor = tensor.contiguous(memory_format=channels_last_format(tensor.dim()))
        return tensor


def resolve_channels_last(value: bool | str) -> bool | None:
    """``trainer.channels_last``: true, false, or None for ``auto``."""
    if isinstance(value, bool):
        return value
    if str(value).lower() == "auto":
        return None
    raise ConfigError(f"trainer.channels_last={value!r} is not known; choose auto, true or false.")


def make_runtime(
    device: str = "auto",
    precision: str | int = "32",
    channels_last: bool | str = True,
    cudnn_benchmark: bool = True,
    deterministic: bool = False,
) -> Runtime:
    """Build the runtime and set the global backend flags it implies.

    ``channels_last=auto`` is channels-last on a GPU; on a CPU it is left to measure (``Runtime.auto``), as is
    ``precision=auto`` on a CPU with native bf16 (without it bf16 is emulated and never faster: float32). A
    ``deterministic`` CPU run measures nothing (two runs could measure differently): ``auto`` is channels-last
    and float32 there.
    """
    dev = resolve_device(device)
    layout = resolve_channels_last(channels_last)
    auto: tuple[str, ...] = ()
    if deterministic and dev.type == "cpu":  # a measured choice could differ between two runs: fixed ones instead
        if layout is None or str(precision) == "auto":
            log.info("trainer.deterministic=true: no layout or precision measurement; channels-last float32 where auto")
        layout = True if layout is None else layout
        precision = "32" if str(precision) == "auto" else precision
    if dev.type == "cpu":
        auto += ("channels_last",) if layout is None else ()
        auto += ("precision",) if str(precision) == "auto" and cpu_has_fast_bf16() else ()
    dtype = resolve_precision(precision, dev, quiet="precision" in auto)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    return Runtime(device=dev, autocast_dtype=dtype, channels_last=layout is not False, auto=auto)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states as tensors and plain values, so a checkpoint loads with ``weights_only=True``."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded onto a GPU has moved it there
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put a model in eval mode with inference tensors; restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
