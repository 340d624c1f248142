"""Data: the readers of every layout (dataset), the picture rule (pictures), predict's inputs
(inputs), batch augmentation (augment) and the one LightningDataModule (datamodule)."""
