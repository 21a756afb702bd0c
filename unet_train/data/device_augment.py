"""Batched augmentation on the training device: flips, 90-degree rotations, elastic deformation, intensity.

Albumentations augments one image at a time in the loader workers, on the CPU. On a GPU that
can starve the model: the ISBI recipe's elastic deformation costs milliseconds per crop, and the
workers share the host's few cores. :class:`DeviceAugment` does the same kinds of augmentation
on a whole batch after it reaches the device, in a handful of tensor operations, with per-sample
random parameters and no host synchronisation (no ``.item()``, no data-dependent indexing).

It is enabled by the ``data.device_augment`` node (see ``configs/data/isbi_device.yaml``); the
CPU pipeline then only crops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class DeviceAugment:
    """Random augmentation of a batch of images and masks, on whatever device they are on.

    Each sample draws its own parameters. Flips and the 90-degree rotation are exact permutations
    of the pixels (no interpolation); with ``hflip_p = vflip_p = rotate90_p = 0.5`` the eight
    orientations of a square crop are equally likely, as with albumentations' HorizontalFlip,
    VerticalFlip and RandomRotate90. The small rotation and the elastic deformation share one
    sampling grid (``grid_sample``): images are interpolated bilinearly, masks by nearest
    neighbour, so mask values stay class indices. Intensity changes touch the image only.

    Args:
        hflip_p: probability of a left-right flip.
        vflip_p: probability of an up-down flip.
        rotate90_p: probability of a 90-degree rotation (square crops only; ignored otherwise).
        rotate_limit: largest small rotation, in degrees (0 disables it).
        rotate_p: probability of a small rotation.
        elastic_alpha: elastic displacement scale in pixels (as albumentations' ``alpha``).
        elastic_sigma: Gaussian smoothing of the displacement field in pixels (``sigma``).
        elastic_p: probability of an elastic deformation.
        brightness_limit: brightness shift drawn from ``[-limit, limit]`` (images in [0, 1]).
        contrast_limit: contrast factor drawn from ``1 + [-limit, limit]``.
        intensity_p: probability of a brightness/contrast change.
    """

    def __init__(
        self,
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        rotate90_p: float = 0.5,
        rotate_limit: float = 15.0,
        rotate_p: float = 0.3,
        elastic_alpha: float = 30.0,
        elastic_sigma: float = 6.0,
        elastic_p: float = 0.5,
        brightness_limit: float = 0.1,
        contrast_limit: float = 0.1,
        intensity_p: float = 0.5,
    ) -> None:
        self.hflip_p = hflip_p
        self.vflip_p = vflip_p
        self.rotate90_p = rotate90_p
        self.rotate_limit = rotate_limit
        self.rotate_p = rotate_p
        self.elastic_alpha = elastic_alpha
        self.elastic_sigma = elastic_sigma
        self.elastic_p = elastic_p
        self.brightness_limit = brightness_limit
        self.contrast_limit = contrast_limit
        self.intensity_p = intensity_p

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``images`` (N, C, H, W) float and ``masks`` (N, H, W) integer alike; returns both.

        ``generator`` (on the batch's device) makes the draw reproducible; by default the
        device's global RNG is used, so ``seed`` in the config covers it.
        """
        if images.ndim != 4:
            raise ValueError(f"DeviceAugment expects images of shape (N, C, H, W), got {tuple(images.shape)}.")
        n, _, height, width = images.shape
        dev = images.device

        def coin(p: float) -> torch.Tensor:
            return torch.rand(n, device=dev, generator=generator) < p

        mask_4d = masks.unsqueeze(1) if masks is not None else None
        # Exact orientation changes first: a torch.where over the batch keeps every sample's
        # choice on the device (each costs one copy of the batch, trivial next to a model step).
        if self.rotate90_p > 0 and height == width:
            images, mask_4d = _where(coin(self.rotate90_p), _rot90, images, mask_4d)
        if self.hflip_p > 0:
            images, mask_4d = _where(coin(self.hflip_p), lambda t: t.flip(-1), images, mask_4d)
        if self.vflip_p > 0:
            images, mask_4d = _where(coin(self.vflip_p), lambda t: t.flip(-2), images, mask_4d)

        grid = self._grid(n, height, width, dev, coin, generator)
        if grid is not None:
            # Reflection at the borders (as albumentations' reflect modes) so warped edges hold image content.
            dtype = images.dtype
            images = F.grid_sample(
                images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
            ).to(dtype)
            if mask_4d is not None:
                warped = F.grid_sample(
                    mask_4d.float(), grid, mode="nearest", padding_mode="reflection", align_corners=False
                )
                mask_4d = warped.round().to(mask_4d.dtype)

        if self.intensity_p > 0 and (self.brightness_limit > 0 or self.contrast_limit > 0):
            on = coin(self.intensity_p).view(n, 1, 1, 1)
            contrast = 1 + (2 * torch.rand(n, 1, 1, 1, device=dev, generator=generator) - 1) * self.contrast_limit
            brightness = (2 * torch.rand(n, 1, 1, 1, device=dev, generator=generator) - 1) * self.brightness_limit
            changed = (images * contrast + brightness).clamp_(0.0, 1.0)
            images = torch.where(on, changed, images)

        return images, (mask_4d.squeeze(1) if mask_4d is not None else None)

    def _grid(
        self, n: int, height: int, width: int, dev: torch.device, coin, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """The (N, H, W, 2) sampling grid of the small rotation and the elastic field, or None when both are off."""
        use_rotation = self.rotate_p > 0 and self.rotate_limit > 0
        use_elastic = self.elastic_p > 0 and self.elastic_alpha > 0
        if not (use_rotation or use_elastic):
            return None
        # Pixel-centre coordinates in pixels, centred on the image middle (rotation about the centre).
        ys = torch.arange(height, device=dev, dtype=torch.float32) - (height - 1) / 2
        xs = torch.arange(width, device=dev, dtype=torch.float32) - (width - 1) / 2
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        y = y.expand(n, height, width)
        x = x.expand(n, height, width)
        if use_rotation:
            degrees = (2 * torch.rand(n, device=dev, generator=generator) - 1) * self.rotate_limit
            angle = torch.where(coin(self.rotate_p), degrees, torch.zeros_like(degrees)) * (math.pi / 180)
            cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
            x, y = cos * x - sin * y, sin * x + cos * y
        if use_elastic:
            # Uniform noise in [-1, 1] smoothed by a Gaussian and scaled by alpha: albumentations'
            # ElasticTransform field. Two separable 1D convolutions keep it O(H W sigma).
            noise = 2 * torch.rand(n, 2, height, width, device=dev, generator=generator) - 1
            field = _gaussian_blur(noise, self.elastic_sigma) * self.elastic_alpha
            field = field * coin(self.elastic_p).view(n, 1, 1, 1)
            x = x + field[:, 0]
            y = y + field[:, 1]
        # Back to grid_sample's [-1, 1] coordinates (align_corners=False: -1 and 1 are the outer pixel edges).
        gx = (x + (width - 1) / 2 + 0.5) * (2 / width) - 1
        gy = (y + (height - 1) / 2 + 0.5) * (2 / height) - 1
        return torch.stack([gx, gy], dim=-1)


def _rot90(t: torch.Tensor) -> torch.Tensor:
    return torch.rot90(t, 1, dims=(-2, -1))


def _where(flags: torch.Tensor, op, images: torch.Tensor, masks: torch.Tensor | None):
    """Apply ``op`` to the samples whose flag is set, on images and masks alike."""
    pick = flags.view(-1, 1, 1, 1)
    images = torch.where(pick, op(images), images)
    if masks is not None:
        masks = torch.where(pick, op(masks), masks)
    return images, masks


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel of ``x`` (N, C, H, W), reflect-padded, truncated at 4 sigma."""
    radius = max(1, int(4 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    # Reflect padding needs the pad below the side length; tiny crops fall back to replicate.
    mode = "reflect" if radius < min(x.shape[-2:]) else "replicate"
    x = F.pad(x, (radius, radius, 0, 0), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode=mode)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
