"""The approximate inversions' option checks, tested across them (null-text, NPI/ProxEdit, fixed
point, AIDI, pix2pix-zero). Each method's own tests are in its file (test_null_text.py, ...)."""

import pytest

from tests.inversion.approximate_runs import settings
from videdit.errors import VideditError


@pytest.mark.parametrize("method, params, fix", [
    ("null_text", {"guidance": 0.5}, "[1, 50]"),
    ("null_text", {"inner_steps": -1}, "[0, 1000]"),
    ("null_text", {"lr": 0.0}, "(0, 1]"),
    ("null_text", {"early_stop": -1.0}, ">= 0"),
    ("null_text", {"lr_decay": 1.0}, "[0, 1)"),
    ("proxedit", {"prox": "hard"}, "'l0', 'l1'"),
    ("proxedit", {"quantile": 1.0}, "[0, 1)"),
    ("proxedit", {"threshold": -1.0}, ">= 0"),
    ("proxedit", {"recon_lr": 2.0}, "[0, 1]"),
    ("proxedit", {"dilate": -1}, ">= 0"),
    ("fixed_point", {"iterations": 0}, "[1, 100]"),
    ("fixed_point", {"average_step_range": [3, 1]}, "0 <= first <= end"),
    ("fixed_point", {"pick": "smallest"}, "'last'"),
    ("fixed_point", {"lambda_kl": -1.0}, ">= 0"),
    ("fixed_point", {"tol": -1.0}, ">= 0"),
    ("aidi", {"memory": 0}, "[1, 20]"),
    ("aidi", {"guidance": 60.0}, "[0, 50]"),
    ("pix2pix_zero", {"lambda_kl": -1.0}, ">= 0"),
    ("pix2pix_zero", {"num_auto_corr_rolls": 0}, "[1, 100]"),
    ("pix2pix_zero", {"reference_size": -8}, ">= 0"),
    ("npi", {"guidance": 2.0}, "takes no options"),
])
def test_config_validation(method, params, fix):
    with pytest.raises(VideditError, match=method) as e:
        settings(method, **params)
    assert fix in str(e.value)
