"""One registry kind for inversions, editors and temporal modules.

A :class:`Registry` maps unique names to specs (:class:`Entry` and its subclasses: the
name, the typed config dataclass, a one-line summary and the declared capabilities). It
finds its entries itself: the first lookup imports every public module of its package, and
each module registers what it defines with a decorator. A name registered twice is an
error, never a silent overwrite.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from videdit.errors import VideditError


def departs(default, *, official, why: str):
    """A config field whose default is not the reference code's ``official`` value, and why
    (a video-only extension, an option the reference lacks). ``videdit methods`` marks it."""
    return field(default=default, metadata={"official": official, "why": why})


def improved(default, *, better, why: str):
    """A config field whose default is the reference's and where ``better`` is videdit's
    improvement, off by default; ``why`` names the measured figure (the toy-world table of
    ``tools/tables.py methods``) that justifies it. ``videdit methods`` lists it."""
    return field(default=default, metadata={"better": better, "why": why})


@dataclass(frozen=True)
class Departure:
    """One option where videdit's default or an offered value differs from the reference."""

    option: str
    default: object
    value: object        # the reference's value (``official``) or videdit's (``better``)
    kind: str            # "departs": the default is not the reference's; "improves": ``value`` is better
    why: str


# the edit settings a method's reference may fix, and their values where none does
# (steps_offset None: the model config's)
EDIT_DEFAULTS = {"steps": 50, "guidance": 7.5, "strength": 1.0, "steps_offset": None}
# the model families a method may run on (``Model.family``); a method declares those it runs on
# (``Entry.families``) and why it refuses the others (``Entry.refuses``)
MODEL_FAMILIES = ("SD1", "SD2", "SDXL", "InstructPix2Pix")
TEXT_TO_IMAGE = ("SD1", "SD2", "SDXL")
# InstructPix2Pix's UNet takes the source image in 4 more input channels; text-to-image methods cannot feed it
NOT_INSTRUCT = {"InstructPix2Pix": "its 8-channel UNet needs the source image as input; use --editor instruct_pix2pix"}
# the model an edit loads where none is named (--model's default): Stable Diffusion 1.5 from the hub
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass(frozen=True)
class Entry:
    """What every registered method declares."""

    name: str
    config: type            # a frozen dataclass of the method's options
    summary: str            # one line, for ``videdit methods``
    module: str = ""        # where it was defined
    reference: str = ""     # the paper and the official code its defaults follow
    # the reference's values of the edit settings it fixes (EDIT_DEFAULTS' keys)
    edit_defaults: Mapping[str, float] = dataclasses.field(default_factory=dict)
    families: tuple[str, ...] = TEXT_TO_IMAGE      # the model families (MODEL_FAMILIES) it runs on
    refuses: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(NOT_INSTRUCT))  # family -> why not
    controlnet: bool | str = True                  # True, or why a ControlNet cannot be attached

    def capabilities(self) -> dict[str, object]:
        """Declared capabilities, by name, for listings and for other stages to read."""
        return {}

    def options(self) -> list[tuple[str, object]]:
        """(option, default) of the config, in order."""
        return [(f.name, _default(f)) for f in dataclasses.fields(self.config)]

    def __post_init__(self):
        unknown = sorted(set(self.edit_defaults) - set(EDIT_DEFAULTS))
        if unknown:
            raise ValueError(f"{self.name}: edit_defaults {unknown} are not among {list(EDIT_DEFAULTS)}")
        undeclared = sorted(set(MODEL_FAMILIES) - set(self.families) - set(self.refuses))
        if undeclared or not set(self.families) <= set(MODEL_FAMILIES):
            raise ValueError(f"{self.name}: say why it refuses {undeclared} (refuses=) or run on them; "
                             f"families are {MODEL_FAMILIES}")

    def check_model(self, family: str, controlnet: bool = False, kind: str = "method") -> None:
        """One line naming what to change where this method cannot run on a model of ``family``
        (with a ControlNet attached: ``controlnet``)."""
        if family not in self.families:
            why = self.refuses.get(family, "not supported")
            raise VideditError(f"{kind} {self.name!r} does not run on {family} models: {why}")
        if controlnet and self.controlnet is not True:
            raise VideditError(f"{kind} {self.name!r} does not run with a ControlNet: {self.controlnet}")

    def model_support(self) -> str:
        """One line for listings: the families it runs on and whether with a ControlNet."""
        control = "with ControlNet" if self.controlnet is True else "no ControlNet"
        return f"{', '.join(self.families)}; {control}"

    def departures(self) -> list[Departure]:
        """The options marked with :func:`departs` or :func:`improved`, in order."""
        out = []
        for f in dataclasses.fields(self.config):
            for kind, key in (("departs", "official"), ("improves", "better")):
                if key in f.metadata:
                    out.append(Departure(f.name, _default(f), f.metadata[key], kind, f.metadata["why"]))
        return out


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


Spec = TypeVar("Spec", bound=Entry)


def summary_of(fn: Callable, name: str) -> str:
    """The first line of ``fn``'s docstring, or ``name`` when it has none."""
    return (fn.__doc__ or name).strip().splitlines()[0]


class Registry(Mapping[str, Spec], Generic[Spec]):
    """Unique name -> spec; discovers its entries by importing the modules of ``package``."""

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._entries: dict[str, Spec] = {}
        self._discovered = False

    def add(self, spec: Spec) -> Spec:
        """Register ``spec``; a second entry under its name is an error."""
        if spec.name in self._entries:
            first = self._entries[spec.name].module
            raise VideditError(f"{self.kind} {spec.name!r} is registered twice ({first} and {spec.module}); "
                               f"rename one")
        self._entries[spec.name] = spec
        return spec

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True   # before importing: a module may look an entry up as it loads
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def __getitem__(self, name: str) -> Spec:
        self._discover()
        if name not in self._entries:
            raise VideditError(f"unknown {self.kind} {name!r}; choose from {sorted(self._entries)}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(self._entries)

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    @contextmanager
    def temporarily(self, spec: Spec) -> Iterator[Spec]:
        """``spec`` registered inside the ``with`` block only (a method made up by a test)."""
        self.add(spec)
        try:
            yield spec
        finally:
            del self._entries[spec.name]

    def having(self, capability: str) -> list[str]:
        """Sorted names of the entries that declare ``capability`` true."""
        return sorted(n for n, spec in self.items() if spec.capabilities().get(capability))
