"""What editing the keyframes alone saves, side by side in one run: seconds, frames through the
UNet and through the VAE decoder, for a clip edited with keyframes (every 4) and

- ``propagation=flow`` (every frame is inverted, denoised and decoded);
- ``pixels=guided`` on top (the same, then the guided filter's pixel stage);
- ``pixels=bilateral`` (only the keyframes go through the model; every frame is made from
  its source under the keyframes' colour maps in a second pass);
- ``pixels=bilateral`` again, after an every-frame edit filled the inversion cache: its
  keyframes are cut out of the cached windows (direct inversion inverts frames independently).

Ratios are to the first row. On a CPU compare ratios only; tiny-random's edits mean nothing,
the rows measure work, not quality (tools/toy_video_table.py measures that).

    python tools/keyframes_bench.py --model tiny-random --frames 32 --size 128 --steps 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "wolf.mp4"

ROWS = {
    "keyframes + flow": {"every": 4, "propagation": "flow"},
    "keyframes + flow + guided": {"every": 4, "propagation": "flow", "pixels": "guided"},
    "keyframes + bilateral": {"every": 4, "pixels": "bilateral"},
}


def frames_through(module, counts: list):
    """A forward pre-hook adding each call's batch size to ``counts``."""

    def hook(mod, args, kwargs):
        counts.append((args[0] if args else next(iter(kwargs.values()))).shape[0])

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--clip", type=Path, default=CLIP)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--window", type=int, default=16)
    a = p.parse_args()

    import videdit
    from videdit import io

    model = videdit.load_model(a.model)
    kw = dict(source_prompt="a wolf", target_prompt="a red wolf", model=model, steps=a.steps, guidance=7.5,
              inversion="direct", editor="prompt_to_prompt", window=a.window,
              read=io.ReadOptions(max_frames=a.frames, size=a.size))
    print(f"model={a.model} clip={a.clip.name} frames={a.frames} size={a.size} steps={a.steps} window={a.window} "
          f"inversion=direct editor=prompt_to_prompt")
    print(f"{'edit':<40}{'s':>8}{'x':>7}{'UNet frames':>13}{'x':>7}{'decoded':>9}{'cache hits':>12}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(name, temporal, False) for name, temporal in ROWS.items()]
        runs.append(("keyframes + bilateral, windows cached", ROWS["keyframes + bilateral"], True))
        for name, temporal, cached in runs:
            cache = Path(tmp) / name
            if cached:   # an every-frame edit first fills the cache with the windows' inversions
                videdit.edit_video(a.clip, cache_dir=cache, temporal={"keyframes": ROWS["keyframes + flow"]}, **kw)
            unet, decoder = [], []
            hooks = [frames_through(model.unet, unet), frames_through(model.vae.decoder, decoder)]
            try:
                t = time.perf_counter()
                res = videdit.edit_video(a.clip, cache_dir=cache, temporal={"keyframes": temporal}, **kw)
                seconds = time.perf_counter() - t
            finally:
                for h in hooks:
                    h.remove()
            base = base or (seconds, sum(unet))
            print(f"{name:<40}{seconds:8.1f}{seconds / base[0]:7.2f}{sum(unet):13d}{sum(unet) / base[1]:7.2f}"
                  f"{sum(decoder):9d}{res.stats.cache_hits:>7d}/{res.stats.windows}")


if __name__ == "__main__":
    main()
