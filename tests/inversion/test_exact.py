"""The exact inversions (EDICT, BDIA, direct, DDPM): exact reconstruction through the pipeline
at guidance 1 and 7.5, and what each does beyond it (fp32 fallback, branch choice, skip,
coupling)."""

import dataclasses
import logging

import pytest
import torch

from videdit.core.loop import Branches, StepCallback, denoise
from videdit.core.schedule import make_schedule
from videdit.editing import EDITORS, EditorSpec, EditPlan
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS, InversionCache, ReplayContext
from videdit.models import load_model, loading, unet_dtype
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct

EXACT = ("bdia", "ddpm", "direct", "edict")
PROMPT = "a wolf"


def rel_error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def replay_context(tiny, **kw):
    fields = dict(schedule=make_schedule(tiny.scheduler_config, 10), n_branches=1, source_branch=None,
                  output_branch=0, source_cond=tiny.encode_text([PROMPT]), uncond=tiny.encode_text([""]),
                  prediction_type="epsilon", guidance=7.5)
    return ReplayContext(**{**fields, **kw})


def settings_for(method, guidance=7.5, steps=10, **kw):
    params = {"guidance": guidance, **kw.pop("inversion_params", {})}
    return EditSettings(source_prompt=PROMPT, target_prompt=PROMPT, steps=steps, guidance=guidance, inversion=method,
                        inversion_params=params, **kw)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("method", EXACT)
def test_reconstruction_is_exact(tiny, wolf_frames, method, guidance, steps):
    """Measured on these frames (fp32): EDICT <= 6.5e-5 (25 steps, guidance 7.5), BDIA
    <= 3.1e-5; direct and DDPM replay their trajectory to the last bit (0)."""
    s = settings_for(method, guidance, steps)
    inv = invert_frames(tiny, wolf_frames, s)
    err = rel_error(reconstruct(tiny, inv, s), inv.source)
    assert err <= 1e-4, err
    assert inv.n_steps == steps


def test_replay_warns_when_the_edit_guidance_differs(tiny, wolf_frames, caplog):
    s = settings_for("edict", 7.5)
    inv = invert_frames(tiny, wolf_frames, s)
    with caplog.at_level(logging.WARNING, logger="videdit.inversion"):
        z = reconstruct(tiny, inv, dataclasses.replace(s, guidance=3.0))
    assert "edict inverted at guidance 7.5 but the edit samples at 3" in caplog.text
    assert rel_error(z, inv.source) > 1e-2  # no longer the reconstruction


@pytest.mark.parametrize("method", EXACT)
def test_configs_reject_bad_values(method):
    bad = {"edict": {"p": 0.0}, "bdia": {"gamma": 0.0}, "direct": {"inversion_guidance": -1.0},
           "ddpm": {"skip": 1.5}}[method]
    with pytest.raises(VideditError):
        INVERSIONS[method].config(**bad)


# --- EDICT: low precision and the fp32 fallback ---------------------------------------------

def test_edict_fp32_inversion_fallback(wolf_frames):
    """bf16 tiny-random, 10 steps, guidance 7.5. With the latent algebra in float64 the bf16
    UNet sees the very same inputs in both directions, so a bf16 inversion replayed in bf16 is
    exact (measured 0.0; 1.4e-2 when the algebra was fp32), as is fp32 both ways. An fp32
    inversion replayed by a bf16 UNet is not (0.45): the fallback pays only when the edit's
    UNet runs in fp32 too."""
    model = load_model("tiny-random", dtype="bf16")
    s = settings_for("edict")
    inv_bf16 = invert_frames(model, wolf_frames, s)
    inv_fp32 = invert_frames(model, wolf_frames, dataclasses.replace(s, inversion_dtype="fp32"))
    assert model.unet.dtype == torch.bfloat16  # restored after the fp32 inversion
    err_bf16 = rel_error(reconstruct(model, inv_bf16, s), inv_bf16.source)
    err_mixed = rel_error(reconstruct(model, inv_fp32, s), inv_fp32.source)
    with unet_dtype(model.unet, torch.float32):
        err_fp32 = rel_error(reconstruct(model, inv_fp32, s), inv_fp32.source)
    assert err_fp32 <= 1e-4 and err_bf16 <= 1e-4, (err_fp32, err_bf16)
    assert err_mixed > 0.1, err_mixed


def test_inversion_dtype_is_part_of_the_cache_key(wolf_frames, tmp_path):
    cache = InversionCache(tmp_path)
    bf16 = load_model("tiny-random", dtype="bf16")
    s = dataclasses.replace(settings_for("ddpm"), steps=2)
    invert_frames(bf16, wolf_frames[:1], s, cache=cache)
    assert not invert_frames(bf16, wolf_frames[:1], dataclasses.replace(s, inversion_dtype="fp32"), cache=cache).cached
    fp32 = load_model("tiny-random")  # for an fp32 model both settings are the same inversion
    invert_frames(fp32, wolf_frames[:1], s, cache=cache)
    assert invert_frames(fp32, wolf_frames[:1], dataclasses.replace(s, inversion_dtype="fp32"), cache=cache).cached
    with pytest.raises(VideditError, match="inversion_dtype"):
        dataclasses.replace(s, inversion_dtype="fp64")


def test_unet_dtype_restores_on_error():
    model = load_model("tiny-random", dtype="bf16")
    with pytest.raises(RuntimeError, match="boom"):
        with unet_dtype(model.unet, torch.float32):
            assert model.unet.dtype == torch.float32
            raise RuntimeError("boom")
    assert model.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.unet.parameters())


# --- a two-branch editor (source 0, target 1) that records every step's latents ------------

@pytest.fixture
def two_branch():
    seen = []

    class Record(StepCallback):
        def on_step_end(self, ctx, x):
            seen.append((ctx.step, x.clone()))
            return x

    @dataclasses.dataclass(frozen=True)
    class NoOptions:
        pass

    def plan(ctx, config):
        x = ctx.inversion.noise[None].expand(2, -1, -1, -1, -1).clone()  # (2, F, C, h, w)
        cond = torch.cat([ctx.source_cond, ctx.target_cond])
        return EditPlan(x=x, branches=Branches(cond=cond, uncond=ctx.uncond.expand(2, -1, -1),
                                               guidance=(ctx.guidance, ctx.guidance)),
                        callbacks=[Record()], output_branch=1, source_branch=0)

    spec = EditorSpec(name="_two_branch_test", config=NoOptions, summary="a test", plan=plan, has_source_branch=True)
    with EDITORS.temporarily(spec):
        yield "_two_branch_test", seen


def test_direct_offsets_go_to_the_source_branch_only(tiny, wolf_frames, two_branch):
    name, seen = two_branch
    s = settings_for("direct")
    inv = invert_frames(tiny, wolf_frames, s)
    out = edit_latents(tiny, inv, dataclasses.replace(s, editor=name))
    assert [i for i, _ in seen] == list(range(10))
    for i, x in seen:  # the source branch is back on the inversion trajectory after every step
        assert rel_error(x[0], inv.trajectory[i + 1]) <= 1e-4
    # the target branch is plain guided DDIM from the same noise, uncorrected
    schedule = make_schedule(tiny.scheduler_config, 10)
    cond, uncond = tiny.encode_text([PROMPT, ""]).chunk(2)
    ddim = denoise(tiny.unet, inv.noise[None], schedule, Branches(cond=cond, uncond=uncond, guidance=(7.5,)))[0]
    assert rel_error(out, ddim) <= 1e-4
    assert rel_error(out, inv.source) > 1e-2
    # the authors' "add target" variant offsets both branches: the identity edit is then exact
    add_target = dataclasses.replace(s, editor=name, inversion_params={**s.inversion_params, "add_target": True})
    assert rel_error(edit_latents(tiny, inv, add_target), inv.source) <= 1e-4


def test_direct_without_a_source_branch_corrects_the_output_branch(tiny, wolf_frames):
    s = settings_for("direct")
    inv = invert_frames(tiny, wolf_frames, s)
    (cb,) = INVERSIONS["direct"].replay(inv, replay_context(tiny), INVERSIONS["direct"].config(guidance=7.5)).callbacks
    assert cb.branches == (0,)
    assert inv.extras["offsets"].shape == (10, 2, 4, 8, 8)
    assert inv.unet_evals == 10 + 2 * 10  # DDIM inversion at guidance 1, then the recorded guided pass


# --- DDPM: skip --------------------------------------------------------------------------------

@pytest.mark.parametrize("skip", [0.3, 3])
def test_ddpm_skip_starts_later_and_stays_exact(tiny, wolf_frames, two_branch, skip):
    name, seen = two_branch
    s = settings_for("ddpm", inversion_params={"skip": skip})
    inv = invert_frames(tiny, wolf_frames, s)
    assert inv.start_step == 3 and torch.equal(inv.noise, inv.trajectory[3])
    assert inv.unet_evals == 2 * 7  # guided, steps 3..9 only
    assert torch.count_nonzero(inv.extras["noise_maps"][:3]) == 0
    assert rel_error(reconstruct(tiny, inv, s), inv.source) <= 1e-4
    out = edit_latents(tiny, inv, dataclasses.replace(s, editor=name))  # both branches use the same maps
    assert [i for i, _ in seen] == list(range(3, 10))
    assert rel_error(out, inv.source) <= 1e-4
    with pytest.raises(VideditError, match="leaves no step"):
        invert_frames(tiny, wolf_frames, settings_for("ddpm", steps=3, inversion_params={"skip": 3}))


def test_ddpm_noise_follows_the_seed(tiny, wolf_frames):
    a = invert_frames(tiny, wolf_frames[:1], settings_for("ddpm", steps=2, seed=1))
    b = invert_frames(tiny, wolf_frames[:1], settings_for("ddpm", steps=2, seed=2))
    assert not torch.equal(a.noise, b.noise)


def test_ddpm_noise_is_shared_by_the_frames_unless_asked_per_frame(tiny, wolf_frames):
    """noise='shared' (the default): x_i - sqrt(a_i) x_0 is the same draw for both frames, and
    a frame's trajectory is the one it gets inverted alone; noise='frame': a draw per frame. One
    frame alone gets the same noise either way."""

    def drawn(inv):   # (N, F, C, h, w): the noise of each step's latent
        a = make_schedule(tiny.scheduler_config, inv.n_steps).alphas.view(-1, 1, 1, 1, 1)
        return (inv.trajectory[:-1] - a.sqrt() * inv.source) / (1 - a).sqrt()

    shared_s = settings_for("ddpm", steps=3)
    frame_s = settings_for("ddpm", steps=3, inversion_params={"noise": "frame"})
    shared, frame = invert_frames(tiny, wolf_frames, shared_s), invert_frames(tiny, wolf_frames, frame_s)
    assert float((drawn(shared)[:, 0] - drawn(shared)[:, 1]).abs().max()) < 1e-4
    assert float((drawn(frame)[:, 0] - drawn(frame)[:, 1]).abs().mean()) > 0.5
    alone = invert_frames(tiny, wolf_frames[1:], shared_s)
    assert float((alone.trajectory[:, 0] - shared.trajectory[:, 1]).abs().max()) < 1e-4
    one_frame = invert_frames(tiny, wolf_frames[:1], frame_s)
    assert torch.equal(invert_frames(tiny, wolf_frames[:1], shared_s).trajectory, one_frame.trajectory)
    ddpm = INVERSIONS["ddpm"]
    assert ddpm.inverts_frames_apart(shared_s.inversion_config)
    assert not ddpm.inverts_frames_apart(frame_s.inversion_config)
    with pytest.raises(VideditError, match="ddpm noise must be one of"):
        invert_frames(tiny, wolf_frames, settings_for("ddpm", inversion_params={"noise": "per-frame"}))


# --- EDICT and BDIA: a callback's change keeps their extra state consistent ---------------------

class ZeroCorner(StepCallback):
    def on_step_end(self, ctx, x):
        x = x.clone()
        x[..., :4, :4] = 0
        return x


def test_edict_callback_change_moves_both_latents(tiny, wolf_frames):
    s = settings_for("edict")
    inv = invert_frames(tiny, wolf_frames, s)
    ctx = replay_context(tiny, n_branches=2, source_branch=0, output_branch=1)
    sampler = INVERSIONS["edict"].replay(inv, ctx, INVERSIONS["edict"].config()).sampler
    state = sampler.start(inv.noise[None].expand(2, -1, -1, -1, -1))  # (x, y), each (2, F, C, h, w)
    torch.testing.assert_close(state[1][1], inv.extras["coupled"][0])
    x = ZeroCorner().on_step_end(None, sampler.latents(state))
    new = sampler.with_latents(state, x)
    assert torch.count_nonzero(new[0][..., :4, :4]) == 0
    torch.testing.assert_close(new[1] - new[0], state[1] - state[0])  # delta added to y as well
    # through the loop: the corner stays zero and the pair stays finite
    cond, uncond = tiny.encode_text([PROMPT, ""]).chunk(2)
    out = denoise(tiny.unet, inv.noise[None], ctx.schedule, Branches(cond=cond, uncond=uncond, guidance=(7.5,)),
                  sampler=sampler, callbacks=[ZeroCorner()])
    assert torch.count_nonzero(out[..., :4, :4]) == 0 and torch.isfinite(out).all()


def test_bdia_callback_change_moves_the_kept_latent(tiny, wolf_frames):
    inv = invert_frames(tiny, wolf_frames, settings_for("bdia"))
    sampler = INVERSIONS["bdia"].replay(inv, replay_context(tiny), INVERSIONS["bdia"].config()).sampler
    x_prev, x = inv.trajectory[0][None], inv.trajectory[1][None]
    state = (x_prev, 0.5, x)
    moved = ZeroCorner().on_step_end(None, x)
    new = sampler.with_latents(state, moved)
    torch.testing.assert_close(new[0] - new[2], x_prev - x, check_dtype=False)
    assert sampler.with_latents(sampler.start(x), moved)[0] is None  # first step: nothing kept yet


class BatchSensitive(torch.nn.Module):
    """A text encoder whose last bits depend on the batch's size, as a GPU's kernels' can."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        return (self.inner(ids)[0] * (1 + 1e-6 * len(ids)),)


@pytest.mark.parametrize("method", ["edict", "direct"])
def test_exact_whatever_batch_the_prompts_are_encoded_in(method, wolf_frames, monkeypatch):
    """Inverting embeds [source, negative], editing [source, target, negative]: on an H200 at SD1.5
    size the source prompt's two embeddings differed in their last bits and EDICT / direct
    reconstructed to 5.6 / 17.5 relative error. encode_text embeds each prompt on its own
    (checked here with its cache off, so every call encodes afresh)."""
    monkeypatch.setattr(loading, "TEXT_CACHE_SIZE", 0)
    model = load_model("tiny-random", device="cpu")
    model.text_encoder = BatchSensitive(model.text_encoder)
    assert torch.equal(model.encode_text(["a wolf", "a fox", ""])[0], model.encode_text(["a wolf"])[0])
    s = settings_for(method)
    inv = invert_frames(model, wolf_frames, s)
    assert rel_error(reconstruct(model, inv, s), inv.source) == 0.0
