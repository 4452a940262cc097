"""The identity invariant of every exact inversion on tiny-sdxl (SDXL's pooled text and time ids,
two frames), as tests/inversion/test_exact.py and test_registry.py check it on tiny-random."""

import pytest

from tests.inversion.exact_runs import rel_error, settings_for
from videdit.pipeline import EditSettings, invert_frames, reconstruct

STEPS = 4
# the exact inversions at guidance 1 and 7.5; proxedit at 7.5, where test_registry.py finds it exact
CASES = [(m, g) for m in ("bdia", "ddpm", "direct", "edict") for g in (1.0, 7.5)] + [("proxedit", 7.5)]


@pytest.mark.parametrize(("method", "guidance"), CASES)
def test_reconstruction_is_exact_on_sdxl(tiny_sdxl, wolf_frames, method, guidance):
    """Source prompt = target prompt reconstructs the source latents to <= 1e-4 relative in fp32.
    Measured at 10 steps: 0 for all at guidance 7.5 and for ddpm and direct at 1; at 1 BDIA
    1.1e-6 and EDICT 2.1e-6 (tiny-random: 5.5e-7 and 5.0e-7; the frames share UNet batches of
    another size than the replay's, so float sums round differently). proxedit's inversion
    guidance puts the last latents on the inversion's at 7.5: 0."""
    if method == "proxedit":
        s = EditSettings(source_prompt="a wolf", target_prompt="a wolf", steps=STEPS, guidance=guidance,
                         inversion=method)
    else:
        s = settings_for(method, guidance, STEPS)
    inv = invert_frames(tiny_sdxl, wolf_frames, s)
    assert inv.source.shape == (2, 4, 32, 32)
    err = rel_error(reconstruct(tiny_sdxl, inv, s), inv.source)
    assert err <= 1e-4, f"{method} at guidance {guidance}: {err:.2e}"
