"""The methods a model family runs: registry-wide tests run each method on the models it declares
(``Entry.families``); the others refuse it by name (tests/editing/test_instruct_pix2pix.py)."""

from videdit.registry import Registry


def runs_on(registry: Registry, family: str = "SD1") -> list[str]:
    """Sorted names of the entries of ``registry`` that run on ``family`` (tiny-random's: SD1)."""
    return sorted(name for name, spec in registry.items() if family in spec.families)
