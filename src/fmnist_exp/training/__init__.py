"""Training: the LightningModule (module), its callbacks, schedules, checkpoint files, distillation
and the two plots every run logs."""
