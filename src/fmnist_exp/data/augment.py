"""Augmentations on whole uint8 batches [B, C, H, W], on whatever device the batch lives on.

Randomness is drawn apart from the pixels: `draw_choices` makes every per-image choice for an epoch
at once, on the CPU from a seeded generator, and `apply_choices` uses them on the batch's device. So a
seed gives the same batches on a CPU and on a GPU, and a GPU epoch needs one small host-to-device
copy, not one per step.
"""

import torch
import torch.nn.functional as F

ERASE_AREA = (0.02, 0.33)  # random erasing: fraction of the image (Zhong et al. 2017)
ERASE_LOG_ASPECT = (-1.2, 1.2)  # log of height/width: about 0.3 to 3.3


def draw_choices(
    n: int,
    generator: torch.Generator,
    hflip: bool = False,
    crop_padding: int = 0,
    erase_prob: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Random choices for n images (CPU tensors, last dim n): crop offsets, flips, erase boxes."""
    params = {}
    if crop_padding > 0:
        params["shift"] = torch.randint(0, 2 * crop_padding + 1, (2, n), generator=generator)
    if hflip:
        params["flip"] = torch.rand(n, generator=generator) < 0.5
    if erase_prob > 0:
        params["erase"] = torch.rand(5, n, generator=generator)
    return params


def crop(x: torch.Tensor, padding: int, shift: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `padding` pixels, then cut each image at its offset shift[:, i] (same size)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = shift[0][:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = shift[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [B,C,H,W]


def flip(x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Mirror the chosen images left-right."""
    return torch.where(chosen[:, None, None, None], x.flip(3), x)


def erase(x: torch.Tensor, prob: float, u: torch.Tensor) -> torch.Tensor:
    """Random erasing: with probability `prob`, zero one rectangle per image (zero is Fashion-MNIST's
    background). u [5, B] uniform: area fraction in ERASE_AREA, log-uniform aspect, top, left, coin."""
    _, _, h, w = x.shape
    frac = ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[0]
    aspect = torch.exp(ERASE_LOG_ASPECT[0] + (ERASE_LOG_ASPECT[1] - ERASE_LOG_ASPECT[0]) * u[1])
    eh = (frac * h * w * aspect).sqrt().round().clamp(1, h)
    ew = (frac * h * w / aspect).sqrt().round().clamp(1, w)
    top, left = ((h - eh + 1) * u[2]).floor(), ((w - ew + 1) * u[3]).floor()
    rows = torch.arange(h, device=x.device)[None, :]  # [1, H]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # [B, W]
    box = (u[4] < prob)[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # [B, H, W]
    return x.masked_fill(box[:, None], 0)


def apply_choices(
    x: torch.Tensor,
    params: dict[str, torch.Tensor],
    crop_padding: int = 0,
    erase_prob: float = 0.0,
    **_switches,
) -> torch.Tensor:
    """crop -> flip -> erase, each where `params` (draw_choices' output for these B images) says."""
    if "shift" in params:
        x = crop(x, crop_padding, params["shift"])
    if "flip" in params:
        x = flip(x, params["flip"])
    if "erase" in params:
        x = erase(x, erase_prob, params["erase"])
    return x


def augment_batch(x: torch.Tensor, generator: torch.Generator, **switches) -> torch.Tensor:
    """Draw for this batch and apply: `switches` are the `data.augment` keys."""
    params = {k: v.to(x.device) for k, v in draw_choices(len(x), generator, **switches).items()}
    return apply_choices(x, params, **switches)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return augment_batch(x, generator, hflip=True)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    return augment_batch(x, generator, crop_padding=padding)


def random_erase(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    return augment_batch(x, generator, erase_prob=prob)
