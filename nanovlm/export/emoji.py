"""Real pictures with captions nobody on the project wrote, without a download: emoji and their Unicode names.

    apt-get install fonts-noto-color-emoji          # Debian's colour emoji font
    python -m nanovlm.export.emoji out=emoji         # emoji/train.csv, emoji/val.csv, emoji/images/

Every single-character emoji the font draws is rendered at 136 x 128 on white and captioned with its Unicode name,
lower-cased ("umbrella with rain drops"); a seeded fifth of them is val. What docs/data.md trains on as its
free-form real-data check: many val words never occur in training, so retrieval is far from saturated.
"""

from __future__ import annotations

import csv
import random
import sys
import unicodedata
from pathlib import Path

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
BLOCKS = (range(0x1F300, 0x1FAFF), range(0x2600, 0x27BF))  # the emoji blocks; Miscellaneous Symbols and Dingbats


def write(out: Path, seed: int = 0) -> tuple[int, int]:
    """Render the emoji into `out`; returns (train, val) counts."""
    from PIL import Image, ImageDraw, ImageFont

    if not FONT.is_file():
        raise ValueError(f"no colour emoji font at {FONT}: apt-get install fonts-noto-color-emoji")
    font = ImageFont.truetype(str(FONT), 109)  # the size the font's bitmaps are drawn at
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for code in (c for block in BLOCKS for c in block):
        name = unicodedata.name(chr(code), "")
        if not name:
            continue
        image = Image.new("RGB", (136, 128), (255, 255, 255))
        ImageDraw.Draw(image).text((0, 0), chr(code), font=font, embedded_color=True)
        if len(image.getcolors(maxcolors=4) or range(5)) < 3:  # the font has no glyph for it: (nearly) blank
            continue
        path = f"images/{code:05x}.png"
        image.save(out / path)
        rows.append((path, name.lower()))
    random.Random(seed).shuffle(rows)
    n_val = len(rows) // 5
    for split, part in (("val", rows[:n_val]), ("train", rows[n_val:])):
        with (out / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            writer.writerows(sorted(part))
    return len(rows) - n_val, n_val


def main(argv: list[str] | None = None) -> int:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv) if "=" in a)
    try:
        if "out" not in args:
            raise ValueError("usage: python -m nanovlm.export.emoji out=DIR")
        train, val = write(Path(args["out"]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {train} train and {val} val emoji to {args['out']}/; python train.py data=csv "
          f"data.path={args['out']}/train.csv data.val_path={args['out']}/val.csv")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
