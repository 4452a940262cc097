"""Clips made in code for the temporal modules' tests: textures that slide by a known amount,
a cut, and counting what reaches a model part."""

import cv2
import numpy as np

from videdit.video.module import TemporalModule, TemporalPlan
from videdit.video.warp import warp

SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"
INNER = (slice(8, -8), slice(16, -16))                          # away from what slides in or out
LAST = dict(timestep=0, alpha=1.0, alpha_prev=1.0, n_steps=2)   # a StepContext's last step


def cut_clip(n=8, cut=5, size=16):
    """A gradient drifting one grey level a frame, then another picture from frame ``cut``."""
    ramp = np.linspace(0, 200, size, dtype=np.float32)[None, :, None].repeat(size, 0).repeat(3, 2)
    frames = np.stack([ramp + i for i in range(n)])
    frames[cut:] = 255 - frames[cut:]
    return frames.astype(np.uint8)


def texture(shape, lo, hi, seed=0):
    noise = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    smooth = cv2.GaussianBlur(noise, (7, 7), 2).astype(np.float32)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (lo + (hi - lo) * smooth).astype(np.uint8)


def sliding_texture(n):
    """``n`` frames of a texture sliding 2 px left a frame: frame g(x) = frame a(x + 2 (g - a))."""
    base = texture((64, 96, 3), 0, 255, seed=1)
    return np.stack([base[:, 2 * i:2 * i + 64] for i in range(n)])


def slid(image, by):
    """``image`` brought ``by`` frames of the sliding texture later: g(x) = a(x + 2 (g - a))."""
    shift = np.zeros((*image.shape[:2], 2), np.float32)
    shift[..., 0] = 2 * by
    return warp(image.astype(np.float32), shift)


def frames_through(model, modules, run) -> list[int]:
    """How many frames (summed over calls) reach each of ``modules``' forward while ``run()`` runs
    (once, counted for all of them)."""
    seen = [[] for _ in modules]

    def counter(into):
        def count(mod, args, kwargs):
            into.append((args[0] if args else next(iter(kwargs.values()))).shape[0])
        return count

    handles = [m.register_forward_pre_hook(counter(into), with_kwargs=True) for m, into in zip(modules, seen)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [sum(into) for into in seen]


def by_windows(edit, frames, size, settings):
    """Edit ``frames`` window by window (``size`` each) with one temporal stack:
    ``edit(window_frames, start=, temporal=, last=)`` -> the windows' results."""
    stack = settings.temporal_stack()
    return [edit(frames[i:i + size], start=i, temporal=stack, last=i + size >= len(frames))
            for i in range(0, len(frames), size)], stack



class Probing(TemporalModule):
    """A temporal module that installs one attention module (a test's ``probe``) on every window."""

    name = "probe"

    def __init__(self, probe):
        super().__init__(None)
        self.probe = probe

    def plan(self, window, ctx):
        return TemporalPlan(modules=[self.probe])
