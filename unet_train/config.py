"""Where the Hydra configs live, the structured schemas that check them, and custom resolvers.

Import this module before composing a config: it registers the schemas in Hydra's ConfigStore
and the ``unet.*`` resolvers used by the YAML files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def config_dir() -> Path:
    """Return the folder that holds ``train.yaml``.

    An installed wheel carries the configs as ``unet_train/configs``; a source checkout
    (``pip install -e .``) has them at the top of the repository as ``configs/``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"unet-train's configs were not found in {here / 'configs'} or {here.parent / 'configs'}; "
        "reinstall the package (pip install unet-train) or run from a source checkout."
    )


@dataclass
class TrainerConfig:
    """Schema of ``configs/trainer/*``: how and for how long to train."""

    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    precision: str = "32"  # auto (GPU: bf16 where supported; CPU: bf16 if native and measured faster) | 32 | bf16 | 16
    channels_last: Any = "auto"  # auto (GPU: on; CPU: the faster layout per phase, measured) | true | false
    compile: bool = False  # torch.compile the training step (validation stays eager)
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    cudnn_benchmark: bool = True  # CUDA: let cuDNN pick the fastest convolution per input size
    deterministic: bool = False  # deterministic kernels: a rerun (or a resume) repeats the weights on a CPU
    max_epochs: int = 50  # epochs to train (trainer.max_time may stop the run earlier)
    max_time: float | None = None  # wall-clock budget in seconds
    val_every: int = 1  # validate every N epochs (and always after the last one)
    val_subset: int | None = None  # validate on N images of the val split (a fixed sample, seed 0); null: all
    val_share: float | None = None  # most share of training time validation may take (measured: spaced out); null: off
    grad_clip: float | None = 1.0  # max global gradient norm; null disables clipping
    log_every: int = 10  # optimizer steps between reads of the loss (each read syncs the device)
    num_image_panels: int = 2  # validation images drawn to TensorBoard
    save_every: str = "1"  # last.pt every N epochs ("2"), or after the epoch that ends N s after the last ("300s")
    background_save: bool = True  # write last.pt in a thread (state copied to host memory first)
    early_stopping_patience: int | None = None  # validations without improvement before stopping
    max_nonfinite_steps: int = 5  # consecutive NaN/inf losses before training stops
    progress: str = "auto"  # auto (bars on a terminal) | always | never
    progress_every_s: float | None = 60.0  # without bars: a plain progress line every N seconds; null: none
    strategy: str = "single"  # single | ddp
    sync_batchnorm: bool = False  # DDP on CUDA: batch-norm statistics over the global batch


@dataclass
class PathsConfig:
    """Schema of ``configs/paths/*``: where data and outputs go."""

    root_dir: str = "."
    data_dir: str = "data"
    output_dir: str = "outputs"


def _run_dir_for(ckpt: str | None, default: str) -> str:
    """Resolve the run folder: a resumed run continues in the folder of its checkpoint."""
    if ckpt:
        path = Path(ckpt).expanduser().resolve()
        if path.parent.name == "checkpoints":
            return str(path.parent.parent)
    return default


# The files Hydra writes in a job's ``.hydra`` folder.
HYDRA_RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")


def _output_subdir_for(ckpt: str | None, output_dir: str) -> str | None:
    """Where Hydra records the job (``.hydra``), or None to record nothing: a resume into a run folder that
    already holds its record keeps it, so the job's overrides and config stay those it was started with
    (``unet-summarize`` reads them); ``unet-train`` appends the resume to ``resume_log.yaml`` instead.
    Nor is anything recorded through a link at ``.hydra`` or its files: Hydra would write through it."""
    record = Path(output_dir) / ".hydra"
    if any(entry.is_symlink() for entry in (record, *(record / name for name in HYDRA_RECORD))):
        return None  # Hydra writes with open(): never through a planted link (the run then refuses it in one line)
    if ckpt and (record / "config.yaml").is_file():
        return None
    return ".hydra"


def _logit_channels(num_classes: int | str) -> int | str:
    """Binary problems use one logit channel (sigmoid); K > 2 classes use K (softmax).

    ``auto`` stays ``auto`` (e.g. in ``resolved_config.yaml``, written before the data is read);
    ``fit`` resolves ``data.num_classes`` from the masks before it builds the model.
    """
    if num_classes == "auto":
        return "auto"
    return 1 if int(num_classes) <= 2 else int(num_classes)


def _plane_side(patch_size: Any) -> Any:
    """The in-plane side of ``data.patch_size``: the int itself, or ``x`` of ``[z, y, x]`` (a volume crop), for the
    2D transforms a data config also holds when it can train in 3D."""
    return patch_size[-1] if OmegaConf.is_list(patch_size) or isinstance(patch_size, list | tuple) else patch_size


def _monitor_direction(monitor: str, mode: str = "auto") -> str:
    """Optuna's direction for ``monitor``: ``maximize`` for scores, ``minimize`` for losses and errors."""
    from unet_train.engine.validation import monitor_mode  # imports torch: only when a sweeper config asks

    return "minimize" if monitor_mode(str(monitor), str(mode)) == "min" else "maximize"


def register() -> None:
    """Register schemas and resolvers (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="trainer_schema", node=TrainerConfig)  # at the root: not an option of the group
    cs.store(name="paths_schema", node=PathsConfig)
    if not OmegaConf.has_resolver("unet.run_dir"):
        OmegaConf.register_new_resolver("unet.run_dir", _run_dir_for)
    if not OmegaConf.has_resolver("unet.output_subdir"):
        OmegaConf.register_new_resolver("unet.output_subdir", _output_subdir_for)
    if not OmegaConf.has_resolver("unet.logit_channels"):
        OmegaConf.register_new_resolver("unet.logit_channels", _logit_channels)
    if not OmegaConf.has_resolver("unet.plane_side"):
        OmegaConf.register_new_resolver("unet.plane_side", _plane_side)
    if not OmegaConf.has_resolver("unet.monitor_direction"):
        OmegaConf.register_new_resolver("unet.monitor_direction", _monitor_direction)


register()
