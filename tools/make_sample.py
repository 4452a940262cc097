"""Make the sample clip shipped in samples/: a red circle gliding across a gray background,
drawn by the toy world (videdit.toy), 24 frames at 64x64 and 8 fps.

    python tools/make_sample.py            # writes samples/red-circle.mp4
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from videdit import io
from videdit.toy.world import Motion, WorldObject, render_clip

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=ROOT / "samples" / "red-circle.mp4")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fps", type=int, default=8)
    a = p.parse_args()
    if a.frames < 2:
        p.exit(2, f"make_sample.py: error: --frames must be at least 2 (the circle moves across the clip), "
                  f"got {a.frames}\n")
    s = a.size
    circle = WorldObject("circle", "red", (0.3 * s, 0.45 * s), 0.17 * s, 0.0)
    motion = Motion(velocity=(0.4 * s / (a.frames - 1), 0.1 * s / (a.frames - 1)))
    clip = render_clip((circle,), (motion,), ("gray",), a.frames, s)
    io.write_video(a.output, [clip.frames], Fraction(a.fps), crf=10)
    print(f"wrote {a.output}: {a.frames} frames {s}x{s} at {a.fps} fps, caption {clip.caption!r}")


if __name__ == "__main__":
    main()
