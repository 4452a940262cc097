"""pix2pix-zero's editing half (videdit/editing/pix2pix_zero.py): the edit direction, the
cross-attention guidance, its defaults, and the same latents as diffusers'
StableDiffusionPix2PixZeroPipeline on tiny-random."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from videdit.attention import attention_processors
from videdit.core.loop import StepContext, denoise
from videdit.editing import get_editor
from videdit.editing.pix2pix_zero import DIRECTIONS, EDIT, NEG, REC, Pix2PixZeroEditConfig
from videdit.editing.plain import PlainConfig, plain
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_context, edit_latents, invert_frames
from videdit.toy.world import BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPES

from tests.test_cli import SAMPLE, run

SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"
CATS = ["a cat sitting on the street", "a cat playing in the field", "a face of a cat"]
DOGS = ["a dog sitting on the street", "a dog playing in the field", "a face of a dog"]


def settings(**params) -> EditSettings:
    """With sentences the target prompt is the source's (the edit is the sentences')."""
    return EditSettings(source_prompt=SOURCE, target_prompt=SOURCE, steps=4, editor="pix2pix_zero",
                        editor_params={"source_sentences": CATS, "target_sentences": DOGS, **params})


@pytest.fixture(scope="module")
def inverted(tiny, wolf_frames):
    s = settings()
    return s, invert_frames(tiny, wolf_frames[:1], s)


def test_defaults_follow_edit_real():
    """src/edit_real.py: --xa_guidance 0.1, --negative_guidance_scale 5, --num_ddim_steps 50; the
    reconstruction pass replays the source (not pinned to the inversion)."""
    s = EditSettings(editor="pix2pix_zero")
    assert (s.guidance, s.steps, s.strength, s.editor_config.xa_guidance) == (5.0, 50, 1.0, 0.1)
    assert not s.pin_source and "pix2pix-zero" in get_editor("pix2pix_zero").reference


def test_direction_is_the_mean_difference_of_the_text_encoders_embeddings(tiny, inverted, tmp_path):
    """src/utils/edit_directions.py construct_direction: mean(E(target sentences)) - mean(E(source
    sentences)), added to every token of the source prompt's embedding for the edited half
    (edit_pipeline.py: prompt_embeds_edit[1:2] += edit_dir); the same from .txt files, from the
    .pt mean embeddings make_edit_direction.py saves, and from the prompts when no sentences are given."""
    s, inv = inverted
    expected = tiny.encode_text(DOGS).mean(0) - tiny.encode_text(CATS).mean(0)          # (L, D)
    assert float(expected.norm()) > 1   # the sets differ: a zero direction would pass the checks below
    (tmp_path / "cats.txt").write_text("\n".join(CATS) + "\n\n")
    (tmp_path / "dogs.txt").write_text("\n".join(DOGS) + "\n")
    torch.save(tiny.encode_text(CATS).mean(0, keepdim=True), tmp_path / "cats.pt")
    torch.save(tiny.encode_text(DOGS).mean(0, keepdim=True), tmp_path / "dogs.pt")
    for src, tgt in [(CATS, DOGS), (tmp_path / "cats.txt", tmp_path / "dogs.txt"),
                     (tmp_path / "cats.pt", tmp_path / "dogs.pt")]:
        s = settings(source_sentences=src, target_sentences=tgt)
        cond = s.editor_spec.plan(edit_context(tiny, inv, s), s.editor_config).branches.cond   # (3, L, D)
        torch.testing.assert_close(cond[EDIT] - cond[NEG], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(cond[REC], cond[NEG], atol=0, rtol=0)
        torch.testing.assert_close(cond[NEG], tiny.encode_text([SOURCE])[0], atol=0, rtol=0)
    s = dataclasses.replace(s, target_prompt=TARGET, editor_params={})
    cond = s.editor_spec.plan(edit_context(tiny, inv, s), s.editor_config).branches.cond
    torch.testing.assert_close(cond[EDIT], tiny.encode_text([TARGET])[0], atol=1e-5, rtol=0)


def test_a_target_prompt_beside_sentences_is_refused(tiny, inverted):
    s, inv = inverted
    s = dataclasses.replace(s, target_prompt=TARGET)
    with pytest.raises(VideditError, match="target prompt 'a robot wolf in a forest' would be ignored"):
        s.editor_spec.plan(edit_context(tiny, inv, s), s.editor_config)


def test_a_direction_name_reads_the_shipped_sentence_files(tiny, inverted):
    s, inv = inverted
    red, blue = ((DIRECTIONS / f"{c}.txt").read_text().splitlines() for c in ("red", "blue"))
    named = dataclasses.replace(s, editor_params={"direction": "red2blue"})
    listed = settings(source_sentences=red, target_sentences=blue)
    a, b = (x.editor_spec.plan(edit_context(tiny, inv, x), x.editor_config).branches.cond for x in (named, listed))
    assert torch.equal(a, b)


def test_shipped_sentence_sets_are_world_captions():
    """One set per colour and shape of the toy world: every single-object caption with that word
    (3 shapes or 6 colours, times 3 plain and 6 two-tone backgrounds), each once."""
    backgrounds = [b for b in BACKGROUND_COLOURS] + [f"{a} and {b}" for a in BACKGROUND_COLOURS
                                                     for b in BACKGROUND_COLOURS if a != b]
    assert sorted(p.stem for p in DIRECTIONS.glob("*.txt")) == sorted([*OBJECT_COLOURS, *SHAPES])
    for word in [*OBJECT_COLOURS, *SHAPES]:
        lines = (DIRECTIONS / f"{word}.txt").read_text().splitlines()
        colours, shapes = ([word], SHAPES) if word in OBJECT_COLOURS else (OBJECT_COLOURS, [word])
        assert sorted(lines) == sorted(f"a {c} {s} on a {b} background" for c in colours for s in shapes
                                       for b in backgrounds)


def test_one_guidance_step_lowers_the_cross_attention_loss(tiny, inverted):
    """edit_pipeline.py: loss = sum over attn2 layers of ((M - M_ref)^2).sum((1, 2)).mean(0), one SGD
    step of lr xa_guidance on the latents; with the edit's latents away from the reconstruction's,
    the step lowers the loss by lr * |grad|^2 to first order (measured 1.19e-5 of 0.0814 on
    tiny-random at lr 0.1)."""
    s, inv = inverted
    ctx = edit_context(tiny, inv, s)
    plan = s.editor_spec.plan(ctx, s.editor_config)
    (guide,) = plan.callbacks
    step = StepContext(step=1, timestep=int(ctx.schedule.timesteps[1]), alpha=float(ctx.schedule.alphas[1]),
                       alpha_prev=float(ctx.schedule.alphas_prev[1]), n_steps=len(ctx.schedule))
    x = plan.x.clone()
    x[NEG] = x[EDIT] = x[NEG] + 0.5 * torch.randn(x[NEG].shape, generator=torch.Generator().manual_seed(0))
    with attention_processors(tiny.unet, plan.processors):
        before, grad = guide.loss_and_grad(step, x)
        moved = guide.on_step_start(step, x)
        after, _ = guide.loss_and_grad(step, moved)
    lr = s.editor_config.xa_guidance
    torch.testing.assert_close(moved[[NEG, EDIT]], x[[NEG, EDIT]] - lr * grad)
    assert torch.equal(moved[REC], x[REC])
    assert before > 0.01 and after < before
    assert float(before - after) == pytest.approx(lr * float(grad.square().sum()), rel=0.05)


def test_without_xa_guidance_the_edit_is_plain_with_the_shifted_embedding(tiny, inverted):
    """xa_guidance 0 leaves the latents alone: the edit is classifier-free guidance at 5 between the
    source prompt (edit_real.py's negative prompt) and source + direction, from the inverted noise."""
    s, inv = inverted
    s = dataclasses.replace(s, editor_params={**s.editor_params, "xa_guidance": 0.0})
    ctx = edit_context(tiny, inv, s)
    direction = tiny.encode_text(DOGS).mean(0) - tiny.encode_text(CATS).mean(0)
    peer = plain(dataclasses.replace(ctx, target_cond=ctx.source_cond + direction, uncond=ctx.source_cond),
                 PlainConfig())
    expected = denoise(tiny.unet, peer.x, ctx.schedule, peer.branches)[0]
    z = edit_latents(tiny, inv, s)
    # the editor's three unguided branches batch the UNet differently: float sums round apart (up to 1.4e-5)
    assert float((z - expected).norm() / expected.norm()) <= 1e-5
    guided = edit_latents(tiny, inv, dataclasses.replace(s, editor_params={**s.editor_params, "xa_guidance": 5.0}))
    assert float((guided - z).abs().max()) > 1e-2   # the guidance does move the edit


def test_frames_are_guided_as_images_of_their_own(tiny, wolf_frames):
    """The official code edits one image; the loss sums over frames, so each frame of a clip gets
    the gradient, and the edit, it gets alone (batch_size 1: one frame per UNet call, as alone)."""
    s = dataclasses.replace(settings(xa_guidance=5.0), batch_size=1, steps=2)
    both = edit_latents(tiny, invert_frames(tiny, wolf_frames, s), s)
    for f in range(2):
        alone = edit_latents(tiny, invert_frames(tiny, wolf_frames[f:f + 1], s), s)
        assert float((both[f] - alone[0]).abs().max()) <= 1e-5


@pytest.mark.parametrize("xa_guidance", [0.1, 5.0])
def test_the_edit_is_diffusers_pix2pix_zero(tiny, inverted, xa_guidance):
    """diffusers' StableDiffusionPix2PixZeroPipeline.__call__ (the official EditingPipeline.__call__),
    fp32 on CPU, negative prompt = the prompt as edit_real.py passes it: the same latents to 1e-4
    (measured 1.7e-5 and 1.5e-5), where the guidance moves them by 1.2e-3 and 6.0e-2 (largest
    differences to the edit at xa_guidance 0)."""
    from diffusers import DDIMScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        StableDiffusionPix2PixZeroPipeline)

    s, inv = inverted
    s = settings(xa_guidance=xa_guidance)
    z = edit_latents(tiny, inv, s)[0]
    originals = dict(tiny.unet.attn_processors)
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        scheduler=DDIMScheduler.from_config(tiny.scheduler_config), feature_extractor=None, safety_checker=None,
        inverse_scheduler=None, caption_generator=None, caption_processor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    try:   # the pipeline leaves its processors on the UNet
        peer = pipe(SOURCE, source_embeds=pipe.get_embeds(CATS), target_embeds=pipe.get_embeds(DOGS),
                    num_inference_steps=4, guidance_scale=5.0, negative_prompt=SOURCE,
                    cross_attention_guidance_amount=xa_guidance, latents=inv.noise.clone(), output_type="latent",
                    height=64, width=64).images[0]
    finally:
        tiny.unet.set_attn_processor(originals)
    unguided = edit_latents(tiny, inv, settings(xa_guidance=0.0))[0]
    err, effect = float((z - peer).abs().max()), float((z - unguided).abs().max())
    assert err <= 1e-4 and 20 * err < effect


@pytest.mark.parametrize("params, message", [
    ({"source_sentences": CATS}, "both source_sentences and target_sentences"),
    ({"direction": "red2blue", "source_sentences": CATS, "target_sentences": DOGS}, "not both"),
    ({"direction": "cat2dog"}, "shipped sentence sets"),
    ({"source_sentences": "missing.txt", "target_sentences": DOGS}, "not a .txt file"),
    ({"source_sentences": [], "target_sentences": DOGS}, "non-empty list"),
    ({"xa_guidance": -0.1}, "xa_guidance"),
])
def test_bad_options_are_refused_by_name(params, message):
    with pytest.raises(VideditError, match=message):
        Pix2PixZeroEditConfig(**params)


def test_cli_edits_with_the_shipped_sentence_files(tmp_path, capsys):
    """`videdit edit` with the preset, a shipped direction, then the same sentences as files: the same frames."""
    preset = Path(__file__).resolve().parents[2] / "configs" / "pix2pix-zero.yaml"
    caption = "a red circle on a gray background"
    base = ["edit", SAMPLE, "-s", caption, "-t", caption, "--model", "tiny-random", "--steps", "2",
            "--no-cache", "-q", "--max-frames", "1", "--size", "128", "--config", preset]
    code, _, err = run(capsys, *base, "-E", "direction=red2blue", "-o", tmp_path / "named.png")
    assert code == 0, err
    code, _, err = run(capsys, *base, "-E", f"source_sentences={DIRECTIONS / 'red.txt'}",
                       "-E", f"target_sentences={DIRECTIONS / 'blue.txt'}", "-o", tmp_path / "files.png")
    assert code == 0, err
    from PIL import Image

    named, files = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("named", "files"))
    assert named.shape == (64, 64, 3) and np.array_equal(named, files)


@pytest.mark.slow
def test_red_to_blue_turns_the_toy_circle_blue():
    """The toy model at the official defaults (pix2pix-zero inversion and edit, 50 steps, guidance 5,
    xa_guidance 0.1) with the shipped red -> blue sentences: the red circle becomes a blue circle
    (its mean colour measured 32 from blue's, 244 from red's; 27 s on 2 CPU threads)."""
    from videdit.models import load_model
    from videdit.pipeline import edit_image
    from videdit.toy.scores import detect_objects
    from videdit.toy.world import WorldObject, make_scene

    scene = make_scene((WorldObject("circle", "red", (30.0, 34.0), 12.0, 0.0),), ("gray",))
    out = edit_image(scene.image, source_prompt=scene.caption, model=load_model("toy"), inversion="pix2pix_zero",
                     editor="pix2pix_zero", editor_params={"direction": "red2blue"}, use_cache=False)
    found = detect_objects(out)
    assert [(o.colour, o.shape) for o in found] == [("blue", "circle")]
    rgb = out[scene.masks[0]].astype(float).mean(0)
    to_blue, to_red = (float(np.linalg.norm(rgb - OBJECT_COLOURS[c])) for c in ("blue", "red"))
    assert to_blue < 60 and to_red > 200
