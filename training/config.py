"""Typed experiment configs on the command line.

Each experiment declares a dataclass (every knob, its default and a comment) and named presets
(``paper``, ``cpu``). Flags are the field names in kebab-case; a flag given on the command line
overrides the preset; an unknown flag is an error (argparse's own)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field, fields, replace


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def add_config_args(parser: argparse.ArgumentParser, cls, presets: dict | None = None) -> None:
    """One flag per dataclass field, defaulting to None so that 'not given' is visible."""
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help=f"settings preset (default: {default_preset(presets, gpu=False)} on a machine "
                                 f"without a GPU, {default_preset(presets, gpu=True)} with one)")
    defaults = cls()
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(cls, f)
        origin, args = typing.get_origin(t), typing.get_args(t)
        default = getattr(defaults, f.name)
        help_text = (f.metadata.get("help", "") + f" (default: {default})").strip()
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            non_none = [a for a in args if a is not type(None)]
            t = non_none[0] if len(non_none) == 1 else str
            origin, args = typing.get_origin(t), typing.get_args(t)
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif origin in (tuple, list):
            elem = args[0] if args else str
            parser.add_argument(flag, nargs="+", type=elem, default=None, metavar=f.name.upper(),
                                help=help_text)
        else:
            kwargs = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
            parser.add_argument(flag, type=t if callable(t) else str, default=None,
                                help=help_text, **kwargs)


def default_preset(presets: dict, gpu: bool) -> str:
    """``cpu`` on a machine without a GPU (where the experiment has one); otherwise the
    experiment's first preset (``paper`` for Santurkar's figures)."""
    return "cpu" if not gpu and "cpu" in presets else next(iter(presets))


def has_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def resolve_config(cls, args: argparse.Namespace, presets: dict | None = None, gpu: bool | None = None):
    """The preset (given, else ``default_preset``; or the dataclass defaults), then every flag
    given explicitly. ``gpu``: whether this machine has one (default: ask torch)."""
    preset_name = getattr(args, "preset", None)
    if presets:
        preset_name = preset_name or default_preset(presets, has_gpu() if gpu is None else gpu)
        base = presets[preset_name]
    else:
        base = cls()
    overrides = {}
    for f in fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            t = _field_type(cls, f)
            overrides[f.name] = tuple(v) if typing.get_origin(t) is tuple else v
    cfg = replace(base, **overrides)
    if hasattr(cfg, "validate"):
        cfg.validate()
    changed = [k for k, v in overrides.items()
               if k not in RUN_MECHANICS and v != getattr(base, k)]
    if preset_name and changed:  # what the run record and the figure title call this run
        preset_name += " + " + " ".join("--" + k.replace("_", "-") for k in changed)
    return cfg, preset_name


# Flags that change where or how a run executes, not what it computes.
RUN_MECHANICS = {"out", "progress", "device", "data_dir", "parallel"}


@dataclass
class RunOptions:
    """The options every experiment shares, declared once: experiment configs subclass this
    (and override ``out``'s default). ``seeds`` = N trains seeds ``seed .. seed+N-1``
    (``training.seeds.seed_list``); every metrics row carries its ``seed``."""

    seed: int = field(default=0, metadata={"help": "first seed (init, batch order, probed units)"})
    seeds: int = field(default=1, metadata={"help": "number of seeds: seed, seed+1, ..."})
    out: str = field(default="runs/experiment", metadata={"help": "run directory"})
    data_dir: str | None = field(default=None, metadata={"help": "dataset directory (see docs/reproduction.md, \"Data\")"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def validate_run_options(self) -> None:
        require_positive(self, "seeds")
        if self.seed < 0:
            raise ValueError("--seed must be >= 0")


def require_positive(cfg, *names: str) -> None:
    """``--name must be positive`` for the first of ``names`` that is not > 0."""
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")


def require_variants(variants, known) -> None:
    bad = [v for v in variants if v not in known]
    if bad or not variants:
        raise ValueError(f"unknown variants {bad}; choose from {', '.join(known)}")
