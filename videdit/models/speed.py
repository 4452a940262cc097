"""Faster execution of a loaded model, the same edit within float rounding: ``torch.compile`` of
the convolutional parts and channels-last memory.

What is compiled is what no editor reaches into: the UNet's residual blocks (``ResnetBlock2D``),
its down- and upsamplers and the transformer blocks' feed-forwards, and the VAE's encoder and
decoder as wholes. Attention (where editors install processors) and the UNet's own forward stay
eager. Only a module's ``forward`` is replaced (an instance attribute, set once at load: the
option is the model's, and wrapping the class would compile every model in the process), so
hooks on the module itself (DeepCache's, token merging's) run around the graph; a call while a
module *inside* it carries a hook (Plug-and-Play's on a residual block's ``conv2``) runs the
eager forward, since a graph does not see hooks added to its submodules after it was made.
Shapes are fixed (``dynamic=False``): each block compiles once per shape it meets (a window's
rows, the frame size), and the run reports that time apart (:class:`CompileClock`).

The compile mode is inductor's: ``default``; ``reduce-overhead`` and ``max-autotune`` record each
block's kernels on a GPU as a CUDA graph, replayed for every later call of the same shape (one
launch for the block's kernels); a graph's outputs live in memory its next replay overwrites, so
these modes hand back a copy of each output (a block's output may be kept past the next call:
DeepCache's cached features, the editors' stored ones). On the CPU there are no CUDA graphs:
those modes run as ``default`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from videdit.errors import VideditError

COMPILE_BACKENDS = ("inductor", "eager")   # inductor: the one that is faster; eager: dynamo alone (checks wiring)
# inductor's modes (torch._inductor.list_mode_options); the last two record CUDA graphs on a GPU
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# graphs per compiled function's code, shared by every block of a class (SD 1.5: about 14 residual-block shapes,
# times the row counts of inversion, edit and a shorter last window); torch's default is 8. Raised, never lowered,
# for the process: the graphs compile during later edits, so there is no block to restore it after.
RECOMPILE_LIMIT = 256


@dataclass
class CompileClock:
    """Seconds spent in calls that compiled a graph (the compile and that one run), and how many."""

    seconds: float = 0.0
    graphs: int = 0
    mode: str = "default"                                       # inductor's mode (COMPILE_MODES)
    compiled: list = field(default_factory=list, repr=False)   # the modules whose forward is compiled

    def wrap(self, part: torch.nn.Module, fn, memory_format: torch.memory_format, copy_out: bool = False):
        """``fn`` (``part``'s compiled forward) timed when a call of it compiles (torch's frame
        counter moved), its 4-D tensor arguments in ``memory_format`` (a graph specialises on
        strides: one layout, one graph); ``part``'s eager forward while a submodule has hooks.
        ``copy_out``: the outputs copied (a CUDA graph's are overwritten by its next replay)."""
        from torch._dynamo.utils import counters

        eager, inner = part.forward, list(part.modules())[1:]

        def timed(*args, **kwargs):
            if any(m._forward_hooks or m._forward_pre_hooks for m in inner):
                return eager(*args, **kwargs)
            args = [a.contiguous(memory_format=memory_format) if isinstance(a, torch.Tensor) and a.ndim == 4 else a
                    for a in args]
            before = counters["frames"]["ok"]
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if counters["frames"]["ok"] != before:
                self.seconds += time.perf_counter() - start
                self.graphs += counters["frames"]["ok"] - before
            return _copied(out) if copy_out else out

        return timed


def _copied(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_copied(o) for o in out)
    return out


def compile_mode(compile: bool | str) -> str | None:
    """``--compile``'s value -> inductor's mode (True: "default"; False or None: None), or one line
    naming the modes."""
    if compile is None or compile is False:
        return None
    mode = "default" if compile is True else str(compile)
    if mode not in COMPILE_MODES:
        raise VideditError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)} "
                           "(reduce-overhead: CUDA graphs)")
    return mode


def compiled_parts(model) -> list[torch.nn.Module]:
    """The modules whose ``forward`` :func:`accelerate` compiles (see the module's docstring)."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    kinds = (ResnetBlock2D, Downsample2D, Upsample2D, FeedForward)
    parts = [m for m in model.unet.modules() if isinstance(m, kinds)]
    return parts + [model.vae.encoder, model.vae.decoder]


def accelerate(model, *, compile: bool | str = False, channels_last: bool = False,
               backend: str = "inductor") -> CompileClock | None:
    """Make ``model`` faster in place: ``channels_last`` memory for the UNet and VAE, and
    ``compile`` (``torch.compile`` of :func:`compiled_parts`, with ``backend``; True or one of
    :data:`COMPILE_MODES`, see the module's docstring). Returns the clock of compile time (None
    without ``compile``); ``model.compile_clock`` holds it too. Compiling needs a C++ compiler on
    the CPU (inductor's), Triton on a GPU."""
    mode = compile_mode(compile)
    if backend not in COMPILE_BACKENDS:
        raise VideditError(f"unknown compile backend {backend!r}; choose from {', '.join(COMPILE_BACKENDS)}")
    if channels_last:
        for part in (model.unet, model.vae):
            part.to(memory_format=torch.channels_last)
    if mode is None:
        return None
    if backend == "inductor":
        _check_compiler(model.device)
    if model.compile_clock is not None:   # compiled already
        return model.compile_clock
    import torch._dynamo.config as dynamo_config

    # the limit's name since torch 2.7 (before: cache_size_limit)
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), RECOMPILE_LIMIT))
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    clock = CompileClock(mode=mode)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    options = {"mode": mode} if backend == "inductor" and mode != "default" else {}   # modes are inductor's
    graphs = mode in CUDA_GRAPH_MODES and model.device.type == "cuda"
    for part in compiled_parts(model):
        part.forward = clock.wrap(part, torch.compile(part.forward, backend=backend, dynamic=False, **options),
                                  layout, copy_out=graphs)
        clock.compiled.append(part)
    model.compile_clock = clock
    return clock


def _check_compiler(device: torch.device) -> None:
    """What inductor needs to generate kernels on ``device``, or one line saying what is missing."""
    import importlib.util
    import shutil

    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise VideditError("--compile on a GPU needs Triton (pip install triton); or leave --compile out")
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise VideditError("--compile on the CPU needs a C++ compiler (e.g. apt install g++); or leave --compile out")
