"""How long a picture-folder dataset takes to read: Fashion-MNIST's 70,000 images as PNGs in a folder
per class (data/format=folder) against the same images from the IDX files, side by side in rounds.

    python scripts/decode_pictures.py [--rounds 3] [--folder DIR]

--folder keeps the PNGs there (written once, reused later); by default they go to a temporary folder.
"""

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from fmnist_exp.data import dataset


def write_pngs(data: dataset.Splits, root: Path) -> None:
    for split, (images, labels) in {"train": (data.train_images, data.train_labels),
                                    "test": (data.test_images, data.test_labels)}.items():  # fmt: skip
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / dataset.CLASS_NAMES[int(label)].replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed reads of each side")
    parser.add_argument("--folder", type=Path, help="where the PNGs live (written if missing)")
    args = parser.parse_args()
    idx_dir = dataset.DEBIAN_DIR if dataset.detect_format(dataset.DEBIAN_DIR) == "idx" else None
    if args.rounds < 1 or idx_dir is None:
        parser.error("--rounds must be >= 1, and the IDX files must be installed (make setup)")
    reference = dataset.load([idx_dir])
    root = args.folder or Path(tempfile.mkdtemp(prefix="fmnist-pngs-"))
    if dataset.detect_format(root) != "folder":
        started = time.perf_counter()
        write_pngs(reference, root)
        print(f"wrote 70,000 PNGs to {root} in {time.perf_counter() - started:.1f} s")
    times = {"idx": [], "folder": []}
    for _ in range(args.rounds):
        for name, folder in (("idx", idx_dir), ("folder", root)):
            started = time.perf_counter()
            loaded = dataset.load([folder])
            times[name].append(time.perf_counter() - started)
            assert len(loaded.train_labels) + len(loaded.test_labels) == 70_000
    for name, seconds in times.items():
        print(f"{name:7s} {min(seconds):6.2f} s (rounds: {', '.join(f'{s:.2f}' for s in seconds)})")
    print(f"folder / idx: {min(times['folder']) / min(times['idx']):.1f}x")


if __name__ == "__main__":
    main()
