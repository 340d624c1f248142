"""Learning-rate schedules stepped once per optimizer step. Each takes the optimizer and the run's
total number of steps (filled in by Classifier.configure_optimizers), so configs only hold shape."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, final_lr_ratio: float = 0.0
) -> LRScheduler:
    """Linear warm-up, then cosine decay from the optimizer's lr to final_lr_ratio * lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def one_cycle(
    optimizer: Optimizer, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0
) -> LRScheduler:
    """Smith's one-cycle policy peaking at the optimizer's lr (optimizer.lr is the peak)."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(
        optimizer, max_lr, total_steps=total_steps, pct_start=pct_start, div_factor=div_factor
    )
