"""Augmentations on whole uint8 batches [B, C, H, W], on whatever device the batch lives on.

Each takes an explicit torch.Generator so a seed fixes the batches exactly.
"""

import torch
import torch.nn.functional as F


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` pixels, then cut each image at its own random offset (same size)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    shift_y, shift_x = torch.randint(
        0, 2 * padding + 1, (2, b), generator=generator, device=x.device
    )
    rows = shift_y[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = shift_x[:, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [B,C,H,W]


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, hflip: bool = False, crop_padding: int = 0
) -> torch.Tensor:
    if crop_padding > 0:
        x = random_crop(x, crop_padding, generator)
    if hflip:
        x = random_hflip(x, generator)
    return x
