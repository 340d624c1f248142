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


def random_erase(
    x: torch.Tensor,
    prob: float,
    generator: torch.Generator,
    area: tuple[float, float] = (0.02, 0.33),
    log_aspect: tuple[float, float] = (-1.2, 1.2),
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017): with probability `prob`, zero one rectangle per image
    (zero is the background of Fashion-MNIST). Its area is a uniform fraction of the image in
    `area`, its aspect ratio log-uniform within exp(log_aspect) (about 0.3 to 3.3), its place uniform."""
    b, _, h, w = x.shape
    dev = x.device
    u = torch.rand(5, b, generator=generator, device=dev)
    frac = area[0] + (area[1] - area[0]) * u[0]
    aspect = torch.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[1])
    eh = (frac * h * w * aspect).sqrt().round().clamp(1, h)
    ew = (frac * h * w / aspect).sqrt().round().clamp(1, w)
    top = ((h - eh + 1) * u[2]).floor()
    left = ((w - ew + 1) * u[3]).floor()
    rows = torch.arange(h, device=dev)[None, :]  # [1, H]
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # [B, W]
    erase = (u[4] < prob)[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # [B, H, W]
    return x.masked_fill(erase[:, None], 0)


AUGMENTATIONS = ("hflip", "crop_padding", "erase_prob")  # the keys of `data.augment`


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    hflip: bool = False,
    crop_padding: int = 0,
    erase_prob: float = 0.0,
) -> torch.Tensor:
    """crop -> flip -> erase, each only when switched on (the `data.augment` config)."""
    if crop_padding > 0:
        x = random_crop(x, crop_padding, generator)
    if hflip:
        x = random_hflip(x, generator)
    if erase_prob > 0:
        x = random_erase(x, erase_prob, generator)
    return x
