"""What the toy model's training scripts (``train_toy_controlnet.py``, ``train_toy_pix2pix.py``) share:
their command line, and the loop with its time limit, its progress lines and its resumable checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def parser(doc: str, *, minutes: float, lr: float, drop: float, drop_help: str, export_help: str,
           eval_scenes: int) -> argparse.ArgumentParser:
    """The scripts' options, with each script's defaults."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=minutes, help="stop after this many minutes (checkpoint, export)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--drop", type=float, default=drop, help=drop_help)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-minutes", type=float, default=5)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", metavar="DIR", help="an exported model to train on: its weights and its card's "
                   "step (so its batches are new ones), a fresh optimiser")
    p.add_argument("--export", help=export_help)
    p.add_argument("--eval", type=int, default=eval_scenes, help="held-out scenes scored at export (0: none)")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    a = p.parse_args()
    a.argv = sys.argv[1:]   # for the export's card
    return a


def resume(a, path: Path, opt, modules: dict[str, torch.nn.Module]) -> tuple[int, dict | None]:
    """(the step a checkpoint at ``path`` ended at, the card its run started from), its weights and
    optimiser state loaded; ``a.earlier`` gets the commands of the runs that made it."""
    state = torch.load(path, weights_only=False)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    opt.load_state_dict(state["opt"])
    a.earlier = state.get("commands", [])
    print(f"resumed at step {state['step']}", flush=True)
    return state["step"], state.get("parent")


def start(a, opt, modules: dict[str, torch.nn.Module], path: Path,
          load: Callable[[Path], dict[str, dict]]) -> tuple[int, dict | None]:
    """(the step training starts at, the card of the model it starts from or None): a checkpoint's
    (``--resume``), an exported model's (``--init-from DIR``: the state dicts ``load(DIR)`` gives,
    the step its ``training.json`` names), else 0."""
    a.earlier = []
    if a.resume and path.exists():
        return resume(a, path, opt, modules)
    if not a.init_from:
        return 0, None
    folder = Path(a.init_from)
    card = json.loads((folder / "training.json").read_text())
    for name, state in load(folder).items():
        modules[name].load_state_dict({k: v.float() for k, v in state.items()})
    print(f"starting from {folder} at step {card['steps']}", flush=True)
    return card["steps"], card


def checkpoint(a, path: Path, opt, modules: dict[str, torch.nn.Module], step: int) -> None:
    """Weights, optimiser, step, and what a resumed run's card needs: the model it started from and the
    commands so far."""
    tmp = path.with_suffix(".tmp")
    torch.save({**{n: m.state_dict() for n, m in modules.items()}, "opt": opt.state_dict(), "step": step,
                "parent": a.parent, "commands": [*a.earlier, " ".join(a.argv)]}, tmp)
    tmp.replace(path)


def noised(latents: torch.Tensor, alphas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, noise): ``latents`` at random training timesteps, seeded by ``step``."""
    g = torch.Generator().manual_seed(step)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, len(alphas), (len(latents),), generator=g)
    ab = alphas[t].view(-1, 1, 1, 1)
    return ab.sqrt() * latents + (1 - ab).sqrt() * noise, t, noise


def train_loop(a, opt, modules: dict[str, torch.nn.Module], loss_at: Callable[[int], torch.Tensor],
               step: int, path: Path) -> list[float]:
    """Steps of ``loss_at(step)`` until ``a.steps`` or ``a.minutes``, a checkpoint every ``a.ckpt_minutes``
    and at the end; the losses."""
    t0 = last = time.time()
    losses = []
    while step < a.steps and time.time() - t0 < a.minutes * 60:
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 20 == 0:
            print(f"step {step} loss {np.mean(losses[-20:]):.4f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - last > a.ckpt_minutes * 60:
            checkpoint(a, path, opt, modules, step)
            last = time.time()
    checkpoint(a, path, opt, modules, step)
    print(f"stopped at step {step}, {time.time() - t0:.0f}s", flush=True)
    a.final_step = step
    return losses
