"""Tiny data sets written in the exact on-disk formats the readers take (generated, never downloaded)."""

from pathlib import Path

import numpy as np
from PIL import Image


def omniglot_layout(root: Path, background: dict[str, int], evaluation: dict[str, int], drawings: int = 4) -> Path:
    """``root/images_background/<Alphabet>/characterNN/*.png`` (and evaluation): 105x105 1-bit PNGs.

    Each drawing is white with one black (stroke) square whose place depends on the character, so a
    reader's output can be checked: strokes must come out high.
    """
    rng = np.random.default_rng(0)
    for part, alphabets in (("images_background", background), ("images_evaluation", evaluation)):
        for alphabet, count in alphabets.items():
            for c in range(1, count + 1):
                folder = root / part / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(1, drawings + 1):
                    pixels = np.ones((105, 105), dtype=bool)
                    top, left = rng.integers(0, 60, size=2)
                    pixels[top:top + 40, left:left + 40] = False
                    Image.fromarray(pixels).convert("1").save(folder / f"{c:04d}_{d:02d}.png")
    return root


def miniimagenet_layout(root: Path, classes: dict[str, int], per_class: int = 6, size: int = 100) -> Path:
    """``root/{train,val,test}.csv`` (``filename,label``) and ``root/images/<wnid><index>.jpg``, named
    like Ravi & Larochelle's files; each class is one plain colour, so labels can be checked from pixels.
    The images are ``size`` x ``size + 20``: the reader must resize them.

    ``classes`` maps a split to its number of classes.
    """
    (root / "images").mkdir(parents=True)
    label = 0
    for split, count in classes.items():
        lines = ["filename,label"]
        for _ in range(count):
            wnid = f"n{label:08d}"
            colour = np.array([(37 * label) % 256, (91 * label) % 256, (151 * label) % 256], dtype=np.uint8)
            for i in range(per_class):
                name = f"{wnid}{i:08d}.jpg"
                Image.fromarray(np.broadcast_to(colour, (size, size + 20, 3)).copy()).save(root / "images" / name)
                lines.append(f"{name},{wnid}")
            label += 1
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def image_folder(root: Path, classes: int, per_class: int = 5, size: int = 12, mode: str = "RGB") -> Path:
    """``root/<class>/*.png`` with a constant grey level per class (value 20 * class id)."""
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            name = f"{i}.png" if i % 2 else f"{i}.JPG"  # upper-case suffixes count too
            Image.new(mode, (size, size), (20 * c,) * len(mode)).save(folder / name)
    return root
