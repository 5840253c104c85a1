"""`amif train`: train AMIFNet under an owner's key on registered pairs.

Every step: one key-free encoder pass per crop, then the decoder under the true code (fusion
losses) and under one negative code per crop (identifier target). Negatives: random codes, the
zero code (= no key) and near-miss codes (1-16 bits flipped), the near-miss share ramping up
(curriculum). Deterministic with a seed: step t draws from RNG(seed, t, rank), so a resumed run
continues the same sequence. Checkpoints (weights + optimizer, safetensors) go to a folder kept
out of git; a model package is written at every checkpoint and is itself a valid resume point.
Under `torchrun` it trains with DistributedDataParallel (gloo); otherwise one process. Under torchrun
`batch` is per rank (the manifest records it with `world_size` and `effective_batch`, batch x world size),
the time limit (`minutes`) is one decision for all ranks, which stop after the same step with one checkpoint,
and the checkpoint holds every rank's own state (its forgers and RNG), so a resume on as many ranks continues
bit for bit as a single-process resume does.

The settings (TrainConfig) come in groups, one per concern, each checked by its own validate():
fusion (FusionLoss: the hinges against the max rule), identifier (Identifier: what wrong codes' outputs carry
and the surgery hinge), negatives (Negatives: how wrong codes are drawn), forgers (Forgers: the training
forgers), anchoring (Anchoring) and research (Research: switches measured and never shipped). A recipe (TOML,
read_recipe; research/recipes/) holds them in the same nested form, which is also what a package's manifest
records (TrainConfig.record: the settings that differ from their defaults).

Hardening against white-box surgery: each step also runs the unkeyed codes with the watermark memory's grid
zeroed, set to its mean, or set to one (the edits an attacker would try first), and pushes those outputs away
from the keyed output (an SSIM hinge, identifier.ablate_weight), so removing the memory gives no clean fusion.

Hardening against white-box key forging: a small pool of continuous codes (forgers.pool) plays the forger of
`amif attack` during training. Every step each pool code takes one Adam step on the fusion loss of its own
outputs (exactly what a forger does with the released weights) and is trained as a negative like the others; a
pool code restarts from a random +-1 code with a small probability per step (forgers.restart), so the network
sees forgers at every stage of their descent. The pool (codes, Adam moments and the memory below) is part of
the checkpoint. With forgers.memory, that many of each step's wrong-key codes are drawn from a memory of the
forgers' past codes (ForgePool.recall), so the network keeps marking the ways earlier forgers went.

With negatives.partial_keys, that share of the sampled wrong-key codes becomes partial keys: key embeddings
part of the way to the key's (partial_key_phases), marked like the others. With identifier.decoy_alpha, the
identifier's opacity in a wrong code's output follows its embedding's cosine to the key's (decoy_opacity):
mark_alpha at cosine 0 and above, falling to decoy_alpha at -DECOY_COSINE and below, so a forger's descent has
somewhere to go that is not the key; with negatives.decoys, that share of the sampled wrong-key codes is moved
part of the way to the key's opposite embedding (decoy_phases), so the network learns the light mark there.

The fusion loss carries the hinges of `fusion`: the shortfall of the keyed output's VIF, SD, SF, SCD and MI
against the element-wise max rule's on the same crop (losses.fusion_loss).

With anchoring.weight, the loss also carries that weight x the L1 distance of the keyed outputs to a fixed
package's outputs on the same crops: by default the init package's keyed outputs (a frozen copy of its
weights), so a continuation that learns more protection keeps the authorized fusion it started from; or
(`anchor`) an unprotected twin's, whose fusion the keyed outputs are then distilled towards.

With identifier.trace_strength, the unkeyed target also carries that much of the key's secret texture
(trace.py): the channel a student distilled from unkeyed outputs inherits and the owner can find. With
identifier.public_strength, also the model's public texture, which anyone holding the sources can find.
With identifier.dihedral both textures are of the kind that follows the anatomy under flips and turns
(trace.Texture) and crops are turned as well as flipped, so the network writes them over the same anatomy
whichever way the inputs are presented.

With lr_anneal, both learning rates (network and memory) follow a half cosine from their value down to
LR_FLOOR of it over the run's last `lr_anneal` steps (steps - lr_anneal .. steps); before that they are
constant. The factor is a function of the step alone, so a resumed run continues it.

The research switches (Research: mark_shift, forge_repeat, forge_detector, forge_untraced) are documented on
the class, with what their measurements found.

The unprotected twin (`twin=True`) is the same network and schedule with the fusion loss alone
(hinges included), under the zero code: the evaluation's measure of what protection costs.
"""

from __future__ import annotations

import copy
import csv
import gc
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from amif.errors import AMIFError
from amif.files import atomic_output, write_text
from amif.identifier import identifier_mask
from amif.keys import load_key
from amif.network import AMIFNet, NetConfig, slice_coords, widen_decoder
from amif.package import DEFAULT_THRESHOLD, load_package, save_package
from amif.trace import public_weights, texture, trace_scale, trace_weights
from amif.verify import score_tensor

from .data import default_data_dir, list_pairs, load_pairs
from .losses import CEILINGS, HINGES, MARGIN, fusion_loss, gaussian_blur, marked_target, ssim

INF = float("inf")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AMIFError(message)


@dataclass
class FusionLoss:
    """The fusion loss's hinges against the element-wise max rule on the same crop (losses.fusion_loss): each
    weight 0 (off) or more. The bundled model's last stage: VIF 2, SD 8, SF 2, SCD 0.3, MI 2."""

    vif_weight: float = 0.0  # pixel-domain VIF of the keyed output to each source (w_vif; needs a crop of 48+)
    sd_weight: float = 0.0  # SD (contrast; w_sd)
    sf_weight: float = 0.0  # SF (spatial frequency; w_sf)
    scd_weight: float = 0.0  # SCD (w_scd)
    mi_weight: float = 0.0  # MI over 256 grey levels (w_mi)
    sf_floor: float = MARGIN  # the SF hinge's floor, relative to the max rule's SF
    detail: float = 0.0  # the first image's fine detail added to the intensity target where the second dominates
    undershoot_weight: float = 0.0  # hinge on outputs below both sources (dark rims; 0 = off)
    detail_weight: float = 0.0  # weight of the fine-detail match where the second image dominates (0 = off)
    overshoot_weight: float = 0.0  # hinge on outputs above both sources (halos; 0 = off)
    headroom: float = 0.0  # blur sigma (px) of the detail target's base lowered under its ceiling (0 = off)
    ceiling: str = "white"  # what the base is lowered under: "white" (saturated bone) or "max" (the brighter source)
    bright_weight: float = 0.0  # the target matched where the second image dominates near white (0 = off)
    base_weight: float = 0.0  # the output's base (less its fine detail) matched to the target's (0 = off)

    def validate(self) -> None:
        for k in HINGES:
            w = getattr(self, f"{k}_weight")
            _check(0 <= w < INF, f"The {k.upper()} weight of the fusion loss must be 0 or more (got {w}).")
        _check(0 <= self.sf_floor < INF, f"The SF hinge's floor must be 0 or more (got {self.sf_floor}).")
        _check(0 <= self.detail <= 2, f"The detail gain must be from 0 to 2 (got {self.detail}).")
        for k in ("detail", "undershoot", "overshoot", "bright", "base"):
            w = getattr(self, f"{k}_weight")
            _check(0 <= w < INF, f"The {k} weight must be 0 or more (got {w}).")
        _check(
            0 <= self.headroom <= 16, f"The detail target's headroom must be from 0 to 16 pixels (got {self.headroom})."
        )
        _check(self.ceiling in CEILINGS, f"The ceiling must be one of {', '.join(CEILINGS)} (got {self.ceiling!r}).")


@dataclass
class Identifier:
    """What wrong codes' outputs are trained towards: the keyed output with the identifier blended in
    (losses.marked_target), plus the key's secret texture (trace.py); and the memory-surgery hinge (outputs
    with the memory grid zeroed, at its mean or at one pushed below an SSIM to the keyed output)."""

    mark_weight: float = 4.0  # weight of the wrong codes' loss
    mark_alpha: float = 0.75  # the identifier's opacity in unkeyed outputs (1: no content left under the strokes)
    decoy_alpha: float = 0.0  # its opacity where a wrong code's embedding points away from the key's (0 = off)
    ablate_weight: float = 1.0  # memory-surgery hinge (0 turns it off)
    ablate_ssim: float = 0.5  # surgery outputs must stay below this SSIM to the keyed output
    trace_strength: float = 0.0  # std of the secret texture added to unkeyed outputs (0 = off)
    public_strength: float = 0.0  # std of the model's public texture added to unkeyed outputs (0 = off)
    dihedral: bool = False  # both textures follow the anatomy under flips and turns (trace.Texture); crops turned too

    def validate(self) -> None:
        _check(0 <= self.mark_weight < INF, f"The identifier loss weight must be 0 or more (got {self.mark_weight}).")
        _check(0 < self.mark_alpha <= 1, f"The identifier's opacity must be in (0, 1] (got {self.mark_alpha}).")
        _check(
            0 <= self.decoy_alpha <= self.mark_alpha,
            "The decoys' identifier opacity must be from 0 (off) to "
            f"--mark-alpha ({self.mark_alpha}) (got {self.decoy_alpha}).",
        )
        _check(0 <= self.ablate_weight < INF, f"The surgery hinge weight must be 0 or more (got {self.ablate_weight}).")
        _check(-1 <= self.ablate_ssim <= 1, f"The surgery hinge's SSIM must be from -1 to 1 (got {self.ablate_ssim}).")
        _check(
            0 <= self.trace_strength <= 0.25, f"The trace strength must be from 0 to 0.25 (got {self.trace_strength})."
        )
        _check(
            0 <= self.public_strength <= 0.25,
            f"The public texture's strength must be from 0 to 0.25 (got {self.public_strength}).",
        )
        _check(
            not self.public_strength or self.dihedral,
            "The public texture is dihedral: --public-strength needs --dihedral.",
        )


@dataclass
class Negatives:
    """How each step's sampled wrong-key codes are drawn (sample_negatives): near-miss codes (1-16 bits of the
    key flipped; their share ramps up over near_miss_ramp steps), the zero code, random codes for the rest;
    then partial keys (partial_key_phases) and decoys (decoy_phases) replace shares of them."""

    near_miss_share: float = 0.5
    near_miss_ramp: int = 3000  # steps until near-miss codes reach their full share
    zero_share: float = 0.15
    partial_keys: float = 0.0  # chance that a sampled negative becomes a partial key (0 = none)
    decoys: float = 0.0  # chance that a sampled negative becomes a decoy code (needs identifier.decoy_alpha)

    def validate(self) -> None:
        near, zero = self.near_miss_share, self.zero_share
        _check(
            0 <= near and 0 <= zero and near + zero <= 1,
            f"The near-miss and zero-code shares must be 0 or more, 1 at most together (got {near} and {zero}).",
        )
        _check(self.near_miss_ramp >= 0, f"The near-miss ramp must be 0 steps or more (got {self.near_miss_ramp}).")
        _check(
            0 <= self.partial_keys <= 1,
            f"The share of partial-key negatives must be from 0 to 1 (got {self.partial_keys}).",
        )
        _check(
            0 <= self.decoys <= 1 - self.partial_keys,
            "The share of decoy negatives must be from 0 to 1 minus "
            f"--partial-keys ({1 - self.partial_keys:g}) (got {self.decoys}).",
        )


@dataclass
class Forgers:
    """The pool of training forgers (ForgePool): continuous codes among each step's wrong-key codes that take
    one Adam step per training step on the fusion loss of their own outputs, as `amif attack`'s forgers do."""

    pool: int = 2  # forger codes among each step's negatives (0 turns the forgers off)
    lr: float = 0.05  # the forgers' Adam step, as in `amif attack --forge-lr`
    restart: float = 0.005  # per-step chance that a forger restarts from a random code (mean life 200 steps)
    memory: int = 0  # wrong-key codes per step recalled from the forgers' past codes (ForgePool.recall; 0 = none)

    def validate(self) -> None:
        _check(self.pool >= 0, f"The forgers must be 0 or more of each step's wrong-key codes (got {self.pool}).")
        _check(0 < self.lr < INF, f"The forgers' Adam step must be above 0 (got {self.lr}).")
        _check(0 < self.restart <= 1, f"The forgers' restart chance per step must be in (0, 1] (got {self.restart}).")
        _check(self.memory >= 0, f"The recalled forger codes must be 0 or more (got {self.memory}).")
        _check(not self.memory or self.pool, "Recalled forger codes (--forge-memory) need forgers (--forge-pool).")


@dataclass
class Anchoring:
    """The keyed outputs held near a fixed package's on the same crops: weight x their L1 distance, to the init
    package's keyed outputs (a frozen copy) or to the `anchor` package's (an unprotected twin under the zero code)."""

    weight: float = 0.0  # 0 = off

    def validate(self) -> None:
        _check(0 <= self.weight < INF, f"The anchor weight must be 0 or more (got {self.weight}).")


@dataclass
class Crops:
    """What the training crops show beyond the data's own slices (sample_batch): shares of the crops taken
    from slices zoomed about a point near their centre, so that tissue reaches the slice frame's rim (the
    data's slices have background there, and a network never shown tissue at the rim's coordinates blacks
    it out), and shares whose second image is empty (no content or no coverage: the first image's anatomy
    must come through alone). Those crops are left out of the anchoring (the anchor loses tissue on them)."""

    edge_zoom: float = 0.0  # share of crops from zoomed slices (0 = none)
    zoom_max: float = 1.6  # zoom factor drawn from [1.2, zoom_max]
    empty_second: float = 0.0  # share of crops with an empty second image (0 = none)

    def validate(self) -> None:
        _check(0 <= self.edge_zoom <= 1, f"The share of zoomed crops must be from 0 to 1 (got {self.edge_zoom}).")
        _check(1.2 <= self.zoom_max <= 4, f"The largest zoom must be from 1.2 to 4 (got {self.zoom_max}).")
        _check(
            0 <= self.empty_second <= 1,
            f"The share of crops with an empty second image must be from 0 to 1 (got {self.empty_second}).",
        )


@dataclass
class Research:
    """Research switches: measured (docs/model-history.md) and never shipped in a bundled model or twin; kept
    so that the measurements can be rerun. mark_shift: unkeyed outputs move their content that many pixels
    right and down (a second channel; stopped distillation, let forging through). forge_repeat: Adam steps each
    training forger takes per training step (the extra ones first, weights frozen). forge_detector: every second
    training forger also descends this weight x verify's score (made detector-term forging easier).
    forge_untraced: with a trace, the forgers' target is the identifier without the texture (the forgers then
    failed, but the texture left every unkeyed output)."""

    mark_shift: int = 0
    forge_repeat: int = 1
    forge_detector: float = 0.0
    forge_untraced: bool = False

    def validate(self) -> None:
        _check(0 <= self.mark_shift <= 3, f"The mark shift must be 0 to 3 pixels (got {self.mark_shift}).")
        _check(
            1 <= self.forge_repeat <= 64,
            f"The forgers' Adam steps per training step must be 1 to 64 (got {self.forge_repeat}).",
        )
        _check(
            0 <= self.forge_detector < INF,
            f"The forgers' detector weight must be 0 or more (got {self.forge_detector}).",
        )


GROUPS = {
    "fusion": FusionLoss,
    "identifier": Identifier,
    "negatives": Negatives,
    "forgers": Forgers,
    "anchoring": Anchoring,
    "research": Research,
    "crops": Crops,
}
PROTECTION = ("identifier", "negatives", "forgers", "research")  # groups an unprotected twin does not use
PREFIX = {"forgers": "forge_", "anchoring": "anchor_"}  # flat name = prefix + field (pool -> forge_pool)
NOT_RECORDED = ("steps", "save_every", "minutes", "device")  # the manifest has the steps reached; the rest: no effect
ALWAYS_RECORDED = ("batch", "crop", "seed")


@dataclass
class TrainConfig:
    """Everything `amif train` is told besides its paths: the run's own settings, then one group per concern
    (GROUPS), each with its own validate(). A setting's flat name (flat_names; `amif train`'s flags and the
    records of models trained before the groups) is its field's name, with 'forge_' before the forgers' and
    'anchor_' before the anchoring's."""

    steps: int = 20000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    memory_lr: float = 1e-2
    seed: int = 0
    lr_anneal: int = 0  # cosine-anneal both learning rates over this many final steps (0 = constant)
    widen_decoder: int = 1  # with `init`: multiply the init package's decoder channels by this (network.widen_decoder)
    save_every: int = 250
    minutes: float = 0.0  # stop (with a checkpoint) after this much wall time; 0 = no limit
    device: str = "cpu"
    fusion: FusionLoss = field(default_factory=FusionLoss)
    identifier: Identifier = field(default_factory=Identifier)
    negatives: Negatives = field(default_factory=Negatives)
    forgers: Forgers = field(default_factory=Forgers)
    anchoring: Anchoring = field(default_factory=Anchoring)
    research: Research = field(default_factory=Research)
    crops: Crops = field(default_factory=Crops)

    def validate(self, twin: bool = False, init=None, anchor=None) -> None:
        """Raise AMIFError with one message for the first setting out of range: the run's, each group's, then
        those that depend on another group or on train()'s `twin`, `init` and `anchor`."""
        _check(self.steps >= 0, f"The steps must be 0 or more (got {self.steps}).")
        _check(self.batch >= 1, f"The batch must be 1 or more (got {self.batch}).")
        _check(self.crop >= 8, f"The crop must be 8 pixels or more (got {self.crop}).")
        _check(
            0 < self.lr < INF and 0 < self.memory_lr < INF,
            f"The learning rates must be above 0 (got {self.lr} and {self.memory_lr}).",
        )
        _check(self.lr_anneal >= 0, f"The annealed steps must be 0 or more (got {self.lr_anneal}).")
        _check(self.widen_decoder >= 1, f"The decoder widening factor must be 1 or more (got {self.widen_decoder}).")
        _check(self.save_every >= 1, f"Checkpoints must be saved every 1 step or more (got {self.save_every}).")
        _check(0 <= self.minutes < INF, f"The time limit must be 0 (none) or more minutes (got {self.minutes}).")
        for name in GROUPS:
            getattr(self, name).validate()
        # four 'valid'-filtered, decimated VIF scales need 48 pixels
        _check(
            not self.fusion.vif_weight or self.crop >= 48,
            f"The VIF loss needs a crop of at least 48 pixels (got {self.crop}).",
        )
        pool, memory = self.forgers.pool, self.forgers.memory
        _check(
            twin or pool <= self.batch,
            f"The forgers must be 0 to --batch ({self.batch}) of each step's wrong-key codes (got {pool}).",
        )
        _check(
            twin or memory <= self.batch - pool,
            "The recalled forger codes must be 0 to --batch minus "
            f"--forge-pool ({self.batch - pool}) of each step's wrong-key codes (got {memory}).",
        )
        _check(
            not self.negatives.decoys or self.identifier.decoy_alpha,
            "Decoy codes (--decoys) need their identifier opacity (--decoy-alpha).",
        )
        _check(
            not self.research.forge_untraced or (self.identifier.trace_strength and pool),
            "Untraced forgers need a trace channel (--trace-strength) and forgers (--forge-pool).",
        )
        _check(self.widen_decoder == 1 or init, "Widening the decoder needs a trained package to start from (--init).")
        _check(
            not self.anchoring.weight or init or anchor,
            "Anchoring the keyed outputs (--anchor-weight) needs a trained package: --init or --anchor.",
        )
        _check(not anchor or self.anchoring.weight, "An anchor package (--anchor) needs its weight (--anchor-weight).")

    def flat(self) -> dict:
        """Every setting under its flat name."""
        top = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in GROUPS}
        return top | {flat: getattr(getattr(self, g), f) for flat, (g, f) in flat_names().items() if g}

    def override(self, **flat) -> TrainConfig:
        """A copy with the settings named by their flat names (flat_names) replaced; an unknown name is an
        AMIFError."""
        names, top, groups = flat_names(), {}, {}
        for k, v in flat.items():
            _check(k in names, f"Unknown training setting '{k}'.")
            group, name = names[k]
            (groups.setdefault(group, {}) if group else top)[name] = v
        return replace(self, **top, **{g: replace(getattr(self, g), **kv) for g, kv in groups.items()})

    @classmethod
    def from_flat(cls, **flat) -> TrainConfig:
        """The defaults with the settings given by flat name (as `amif train`'s flags name them)."""
        return cls().override(**flat)

    @classmethod
    def from_dict(cls, d: dict, source: str = "the recipe") -> TrainConfig:
        """A config from nested settings (a recipe's, record()'s form): the run's settings at the top, each
        group's in a table of its name. An unknown setting or a value of the wrong type is an AMIFError naming
        the setting and `source`; a whole number is taken for a decimal one."""
        top, groups, default = {}, {}, cls()
        for k, v in d.items():
            if k in GROUPS:
                _check(isinstance(v, dict), f"'{k}' in {source} must be a table of settings ([{k}]).")
                for gk, gv in v.items():
                    _check(
                        gk in GROUPS[k].__dataclass_fields__,
                        f"Unknown setting '{k}.{gk}' in {source} (known: {', '.join(GROUPS[k].__dataclass_fields__)}).",
                    )
                    groups.setdefault(k, {})[gk] = _typed(gv, getattr(getattr(default, k), gk), f"{k}.{gk}", source)
            else:
                known = [f for f in cls.__dataclass_fields__ if f not in GROUPS]
                _check(k in known, f"Unknown setting '{k}' in {source} (known: {', '.join(known + list(GROUPS))}).")
                top[k] = _typed(v, getattr(default, k), k, source)
        return cls(**top, **{g: GROUPS[g](**kv) for g, kv in groups.items()})

    def record(self, twin: bool = False) -> dict:
        """The config for a manifest's training record: batch, crop and seed, then every other setting that
        differs from its default, each group's in a dict of its name (none when all its settings are defaults).
        Left out: the steps asked for (the manifest has the steps reached), save_every, minutes and device (they
        do not change what is learned) and, for an unprotected twin, the groups it does not use (PROTECTION)."""
        default, out = TrainConfig(), {k: getattr(self, k) for k in ALWAYS_RECORDED}
        for f in fields(self):
            value, base = getattr(self, f.name), getattr(default, f.name)
            if f.name in NOT_RECORDED + ALWAYS_RECORDED or (twin and f.name in PROTECTION):
                continue
            if f.name in GROUPS:
                diff = {k: v for k, v in asdict(value).items() if v != getattr(base, k)}
                if diff:
                    out[f.name] = diff
            elif value != base:
                out[f.name] = value
        return out


def _typed(value, default, name: str, source: str):
    """`value` as the type of `default` (an int is taken for a float), else an AMIFError."""
    kind = type(default)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    _check(ok, f"Setting '{name}' in {source} must be a {kind.__name__} (got {value!r}).")
    return value


def flat_names() -> dict[str, tuple[str | None, str]]:
    """{flat name: (group or None for the run's own settings, field)}."""
    names = {f: (None, f) for f in TrainConfig.__dataclass_fields__ if f not in GROUPS}
    for g, cls in GROUPS.items():
        names.update({PREFIX.get(g, "") + f: (g, f) for f in cls.__dataclass_fields__})
    return names


def flat_record(training: dict) -> dict:
    """A manifest's training record with the groups' settings under their flat names (forge_pool, vif_weight,
    ...), for readers of records of both forms: nested (record()) and flat (models trained before the groups).
    A setting at its default is absent from either, except in flat records' fixed entries."""
    out = {k: v for k, v in training.items() if not (k in GROUPS and isinstance(v, dict))}
    for g in GROUPS:
        if isinstance(training.get(g), dict):
            out.update({PREFIX.get(g, "") + k: v for k, v in training[g].items()})
    return out


RECIPE_KEYS = {"twin": False}  # a recipe's settings that are train()'s arguments, not config


def read_recipe(path) -> tuple[TrainConfig, dict]:
    """A recipe (TOML): the config's settings in record()'s nested form, plus optionally `twin` (true: train the
    unprotected twin). Returns the config (not yet validated) and {'twin': ...} where given. A missing file, a
    TOML error, an unknown setting or a value of the wrong type is an AMIFError naming the file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise AMIFError(f"Recipe {path} does not exist.") from None
    except tomllib.TOMLDecodeError as e:
        raise AMIFError(f"Recipe {path} is not valid TOML: {e}.") from None
    extra = {k: _typed(d.pop(k), v, k, str(path)) for k, v in RECIPE_KEYS.items() if k in d}
    return TrainConfig.from_dict(d, str(path)), extra


LR_FLOOR = 0.01  # where an annealed learning rate ends, as a fraction of its constant value


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The learning rates' multiplier at `step` (0-based): 1 until the last `cfg.lr_anneal` steps,
    then a half cosine from 1 down to LR_FLOOR at the final step."""
    start = cfg.steps - cfg.lr_anneal
    if not cfg.lr_anneal or step < start:
        return 1.0
    t = min(1.0, (step - start) / max(1, cfg.lr_anneal - 1))
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * t))


def sample_negatives(rng: np.random.Generator, true_code: np.ndarray, n: int, step: int, neg: Negatives):
    """One negative code per crop: near-miss (1-16 flipped bits), zero, or random."""
    near = neg.near_miss_share * min(1.0, step / max(1, neg.near_miss_ramp))
    codes = np.empty((n, true_code.size), np.float32)
    for i in range(n):
        u = rng.random()
        if u < near:
            c = true_code.copy()
            c[rng.choice(c.size, rng.integers(1, 17), replace=False)] *= -1
        elif u < near + neg.zero_share:
            c = np.zeros_like(true_code)
        else:
            c = rng.choice([-1.0, 1.0], size=true_code.size).astype(np.float32)
            if np.array_equal(c, true_code):
                c[0] *= -1
        codes[i] = c
    return codes


def partial_key_phases(rng: np.random.Generator, key: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Key-embedding angles part of the way from wrong codes' to the key's, where a white-box forger's codes end
    (docs/model-history.md): per row, every angle moves the same share t ~ U(0.4, 0.85) of the shorter arc from
    the wrong code's to the key's (cosine about 0.5 to 0.95). `key` (f,), `wrong` (n, f): KeyEmbedding.phases
    of the codes."""
    return arc_phases(key, wrong, torch.from_numpy(rng.uniform(0.4, 0.85, (len(wrong), 1))).to(wrong))


def arc_phases(key: torch.Tensor, phases: torch.Tensor, t) -> torch.Tensor:
    """Every angle of `phases` (n, f) moved the share t (a number, or one per row) of the shorter arc to the
    key's angle (`key`, (f,))."""
    return phases + t * (torch.remainder(key - phases + math.pi, 2 * math.pi) - math.pi)


DECOY_COSINE = 0.5  # from this cosine to the key's embedding down, wrong codes carry the identifier at decoy_alpha


def decoy_phases(rng: np.random.Generator, key: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Key-embedding angles part of the way from wrong codes' to the opposite of the key's (the key's angles plus
    pi, where sin, what the MLP reads, is minus the key's): per row a share t ~ U(0.2, 0.9) of the shorter arc
    (cosine about -0.2 to -0.95 to the key's). `key` (f,), `wrong` (n, f): KeyEmbedding.phases of the codes."""
    return arc_phases(key + math.pi, wrong, torch.from_numpy(rng.uniform(0.2, 0.9, (len(wrong), 1))).to(wrong))


def decoy_opacity(cosine: torch.Tensor, ident: Identifier) -> torch.Tensor:
    """The identifier's opacity for wrong codes whose embeddings sit at `cosine` to the key's: mark_alpha from
    cosine 0 up, falling linearly to decoy_alpha at -DECOY_COSINE and below."""
    t = (-cosine / DECOY_COSINE).clamp(0, 1)
    return ident.mark_alpha + t * (ident.decoy_alpha - ident.mark_alpha)


def _zoomed(rng, a: np.ndarray, b: np.ndarray, zoom_max: float) -> tuple[np.ndarray, np.ndarray]:
    """a and b (h, w) zoomed by one factor from [1.2, zoom_max] about one point within an eighth of the slice
    from its centre (bilinear), on the same (h, w) frame."""
    h, w = a.shape
    s = rng.uniform(1.2, zoom_max)
    cy, cx = (rng.uniform(-n / 8, n / 8) + (n - 1) / 2 for n in (h, w))
    ys = np.clip(cy + (np.arange(h) - (h - 1) / 2) / s, 0, h - 1)
    xs = np.clip(cx + (np.arange(w) - (w - 1) / 2) / s, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]

    def bilinear(v):
        v = v.astype(np.float32)
        top = v[y0][:, x0] * (1 - fx) + v[y0][:, x1] * fx
        bottom = v[y1][:, x0] * (1 - fx) + v[y1][:, x1] * fx
        return top * (1 - fy) + bottom * fy

    return bilinear(a), bilinear(b)


def sample_batch(rng, a_all, b_all, cfg: TrainConfig, mask_full: np.ndarray):
    """Random crops with their whole-slice coordinates and identifier mask; random content flips (and, with
    identifier.dihedral on square slices, turns by multiples of 90 degrees); with
    cfg.crops, shares of crops from zoomed slices and with an empty second image (Crops). Returns (a, b,
    coords, mask, plain): a and b (n, 1, crop, crop) in [0, 1], plain (n,) bool: the crop was neither
    zoomed nor emptied. With both shares 0 no further random numbers are drawn (earlier runs reproduce)."""
    n, h, w = a_all.shape
    idx = rng.integers(0, n, cfg.batch)
    ys = rng.integers(0, h - cfg.crop + 1, cfg.batch)
    xs = rng.integers(0, w - cfg.crop + 1, cfg.batch)
    flips = rng.random(cfg.batch) < 0.5
    turns = rng.integers(0, 4, cfg.batch) if cfg.identifier.dihedral and h == w else np.zeros(cfg.batch, int)
    crops = cfg.crops
    zoom = rng.random(cfg.batch) < crops.edge_zoom if crops.edge_zoom else np.zeros(cfg.batch, bool)
    empty = rng.random(cfg.batch) < crops.empty_second if crops.empty_second else np.zeros(cfg.batch, bool)
    coords_full = slice_coords(1, h, w)[0].numpy()
    a, b, co, m = [], [], [], []
    for i, y, x, f, r, z, e in zip(idx, ys, xs, flips, turns, zoom, empty):
        sl = (slice(y, y + cfg.crop), slice(x, x + cfg.crop))
        ai, bi = a_all[i], b_all[i]
        if f:  # flip (and with identifier.dihedral turn) the content, never the layout
            ai, bi = ai[:, ::-1], bi[:, ::-1]
        if r:
            ai, bi = np.rot90(ai, r), np.rot90(bi, r)
        if z:
            ai, bi = _zoomed(rng, ai, bi, crops.zoom_max)
        a.append(ai[sl])
        b.append(np.zeros_like(bi[sl]) if e else bi[sl])
        co.append(coords_full[:, sl[0], sl[1]])
        m.append(mask_full[sl])
    t = lambda v: torch.from_numpy(np.ascontiguousarray(np.stack(v))).float()  # noqa: E731
    plain = torch.from_numpy(~(zoom | empty))
    return t(a)[:, None] / 255, t(b)[:, None] / 255, t(co), t(m)[:, None], plain


def memory_surgery(spatial: torch.Tensor, step: int) -> torch.Tensor:
    """The grid an attacker would substitute: zeros, its mean (bypass), or ones, in turn."""
    kind = step % 3
    if kind == 0:
        return torch.zeros_like(spatial)
    if kind == 1:
        return spatial.mean(dim=(2, 3), keepdim=True).expand_as(spatial)
    return torch.ones_like(spatial)


class ForgePool:
    """Continuous codes descending the fusion loss by Adam, as a white-box key forger does. Every
    `SNAPSHOT` Adam steps each forger's code goes into a memory of the last `MEMORY` codes, so that
    training can keep marking the ways earlier forgers went (`recall`), not only where they are now."""

    MEMORY, SNAPSHOT = 512, 10

    def __init__(self, n: int, bits: int, cfg: TrainConfig):
        self.lr, self.restart, self.detector = cfg.forgers.lr, cfg.forgers.restart, cfg.research.forge_detector
        self.codes, self.m, self.v = (torch.zeros(n, bits) for _ in range(3))
        self.age = torch.full((n,), -1.0)  # Adam steps taken since the last restart; -1: never started
        self.memory = torch.zeros(0, bits)

    def start(self, rng: np.random.Generator) -> torch.Tensor:
        """Restart the forgers that are due (from random +-1 codes); returns the codes to use."""
        for i in range(len(self.codes)):
            if self.age[i] < 0 or rng.random() < self.restart:
                self.codes[i] = torch.from_numpy(rng.choice([-1.0, 1.0], size=self.codes.shape[1]).astype(np.float32))
                self.m[i], self.v[i], self.age[i] = 0, 0, 0
        return self.codes.clone()

    def update(self, grad: torch.Tensor, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        g = grad.detach().cpu()
        self.age += 1
        self.m.mul_(b1).add_((1 - b1) * g)
        self.v.mul_(b2).add_((1 - b2) * g * g)
        mh = self.m / (1 - b1 ** self.age[:, None])
        vh = self.v / (1 - b2 ** self.age[:, None])
        self.codes -= self.lr * mh / (vh.sqrt() + eps)
        due = self.age % self.SNAPSHOT == 0
        if due.any():
            self.memory = torch.cat([self.memory, self.codes[due]])[-self.MEMORY :]

    def recall(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        """Up to n codes drawn (without replacement) from the memory of past forger codes."""
        n = min(n, len(self.memory))
        return self.memory[rng.choice(len(self.memory), size=n, replace=False)] if n else self.memory[:0]

    def objective(self, y, a, b, mask) -> torch.Tensor:
        """The forgers' loss: the fusion loss of their outputs; with a detector weight, every second forger also
        descends that weight x verify's score, as the second variant of `amif attack` forging does."""
        loss = fusion_loss(y, a, b)[0]
        if self.detector:
            loss = loss + self.detector * score_tensor(y[1::2], mask[1::2], scale=1.0).sum() / len(y)
        return loss

    def descend(self, net, a, b, coords, mask, steps: int) -> torch.Tensor:
        """`steps` Adam steps of every forger on the last crops of the batch (one per forger), the network
        frozen (the key-free pass shared); returns the codes reached."""
        k = len(self.codes)
        sl = slice(len(a) - k, None)
        dev = a.device
        with torch.no_grad():
            enc = net.encode(a[sl], b[sl], coords[sl])
        for _ in range(steps):
            code = self.codes.clone().to(dev).requires_grad_()
            loss = self.objective(net.decode(enc, code), a[sl], b[sl], mask[sl])
            self.update(torch.autograd.grad(loss, code)[0])
        return self.codes.clone()

    def tensors(self) -> dict:
        return {f"forge.{k}": getattr(self, k).clone() for k in ("codes", "m", "v", "age", "memory")}

    def load(self, tensors: dict) -> None:
        for k in ("codes", "m", "v", "age"):
            if f"forge.{k}" in tensors and tensors[f"forge.{k}"].shape == getattr(self, k).shape:
                setattr(self, k, tensors[f"forge.{k}"].clone())
        memory = tensors.get("forge.memory")
        if memory is not None and memory.ndim == 2 and memory.shape[1] == self.memory.shape[1]:
            self.memory = memory[-self.MEMORY :].clone()


def _opt_state_tensors(opt: torch.optim.Optimizer) -> dict:
    out = {}
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = opt.state.get(p, {})
            for k, v in st.items():
                out[f"opt.{gi}.{pi}.{k}"] = torch.as_tensor(v).detach().clone().contiguous()
    return out


def _load_opt_state(opt: torch.optim.Optimizer, tensors: dict) -> None:
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"opt.{gi}.{pi}.")}
            if st:
                opt.state[p] = st


def save_checkpoint(path: Path, net, opt, step: int, meta: dict, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = {f"model.{k}": v.contiguous() for k, v in net.state_dict().items()}
    state.update(_opt_state_tensors(opt))
    state.update(extra or {})
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"step": str(step), "meta": json.dumps(meta)})


def rank_tensors(forge: ForgePool | None) -> dict:
    """This process's own training state, beyond the weights and optimizer that every rank shares: the forgers'
    pool (each rank's forgers descend on its own crops) and torch's global RNG. Each step's draws come from
    RNG(seed, step, rank), so there is no data-order state to keep."""
    return {"rng.torch": torch.get_rng_state(), **(forge.tensors() if forge else {})}


def gathered_tensors(states: list[dict]) -> dict:
    """Every rank's rank_tensors as one checkpoint's tensors: rank 0's under their own names (what a
    single-process run saves and resumes from), rank r's (r >= 1) under 'rank{r}.'."""
    out = dict(states[0])
    for r, st in enumerate(states[1:], 1):
        out.update({f"rank{r}.{k}": v for k, v in st.items()})
    return out


def load_checkpoint(path: Path, net, opt, forge: ForgePool | None = None, rank: int = 0) -> tuple[int, bool]:
    """Weights and optimizer into `net` and `opt`, and rank `rank`'s own state (rank_tensors) into `forge` and
    torch's global RNG. Returns the step and whether the checkpoint held that rank's own state (False: a
    checkpoint from fewer ranks; the rank then takes rank 0's, and the run does not continue bit-exactly)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        step = int(f.metadata()["step"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_opt_state(opt, {k: v for k, v in tensors.items() if k.startswith("opt.")})
    prefix = f"rank{rank}."
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    found = rank == 0 or bool(own)
    if not own:
        own = tensors
    if forge:
        forge.load(own)
    if "rng.torch" in own:
        torch.set_rng_state(own["rng.torch"])
    return step, found


LOG_COLUMNS = ["step", "loss", "int", "grad", "ssim", *HINGES, "mark", "ablate", "anchor", "sec_per_step"]


def open_log(path: Path, columns: list[str]):
    """metrics.csv for appending; a log from an older version (other columns) is first rewritten
    under `columns`, its rows matched by column name (a column it lacks is left empty)."""
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, old = list(reader), reader.fieldnames
        if old != columns:
            with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
    else:
        write_text(path, ",".join(columns) + "\n")
    return open(path, "a", newline="")


def train(
    key_path,
    out,
    identifier: str,
    data_dir=None,
    checkpoint_dir="checkpoints",
    init=None,
    cfg: TrainConfig | None = None,
    net_cfg: NetConfig | None = None,
    progress: bool = True,
    log=print,
    twin: bool = False,
    anchor=None,
) -> Path:
    """Train (or resume) under the key at `key_path`; with `twin`, the unprotected twin (no key
    needed: `key_path` may be None and `identifier` is ignored). With `cfg.anchoring.weight`, `anchor` is the
    package whose outputs the keyed outputs are held near (default: `init`'s keyed outputs; an unprotected
    twin's under the zero code). `cfg` is checked first (TrainConfig.validate). The package's training record:
    the data, the steps reached, world size and effective batch, cfg.record(twin), and where it started (`init`,
    `anchor`, decoder_widened_at). Returns the package path."""
    cfg = cfg or TrainConfig()
    cfg.validate(twin, init, anchor)
    if twin:
        key, true_code, identifier = None, np.zeros((net_cfg or NetConfig()).key_bits, np.float32), ""
    else:
        key = load_key(key_path)
        true_code = key.code()
    model_id = Path(out).name if twin else key.model_id
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        torch.distributed.init_process_group("gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if not data_dir.exists():
        raise AMIFError(f"Training data folder {data_dir} does not exist.")
    pairs = list_pairs(data_dir, "train")
    a_all, b_all = load_pairs(pairs)
    mask_full = np.zeros(a_all.shape[1:], np.float32) if twin else identifier_mask(identifier, *a_all.shape[1:])
    textures = []  # (weights, scale): the secret trace from the key, the public texture; unit std on the first pairs
    if not twin and cfg.identifier.trace_strength:
        textures.append((trace_weights(key.secret, model_id, cfg.identifier.dihedral), cfg.identifier.trace_strength))
    if not twin and cfg.identifier.public_strength:
        textures.append((public_weights(model_id), cfg.identifier.public_strength))
    ref = [torch.from_numpy(x[:64, None]).float() / 255 for x in (a_all, b_all)]
    textures = [(tw, strength / trace_scale(*ref, tw)) for tw, strength in textures]

    anchor_net = anchor_record = None
    if anchor:  # a twin runs under the zero code, a package of the key's model under the key
        apkg = load_package(anchor)
        if not apkg.manifest.get("twin") and apkg.model_id != model_id:
            raise AMIFError(
                f"--anchor model '{apkg.model_id}' is neither an unprotected twin nor the key's model '{model_id}'."
            )
        anchor_net = apkg.net.requires_grad_(False)
        anchor_code = np.zeros_like(true_code) if apkg.manifest.get("twin") else true_code
        anchor_record = {"model_id": apkg.model_id, "weights_sha256": apkg.manifest.get("weights_sha256")}
    net, step = AMIFNet(net_cfg), 0
    if init:  # a model package is a resume point: weights and step count (the optimizer restarts)
        pkg = load_package(init)
        if pkg.model_id != model_id:
            raise AMIFError(f"--init model '{pkg.model_id}' is not the key's model '{model_id}'.")
        net, step = pkg.net, int(pkg.manifest.get("training", {}).get("steps", 0))
        init_step = step
        init_record = {
            "weights_sha256": pkg.manifest.get("weights_sha256"),
            "training": pkg.manifest.get("training", {}),
        }
        if cfg.anchoring.weight and anchor_net is None:  # a frozen copy of the init weights
            anchor_net, anchor_code = copy.deepcopy(net).eval().requires_grad_(False), true_code
        if cfg.widen_decoder > 1:
            net = widen_decoder(net, cfg.widen_decoder)
        net.train()
    mem = [net.memory.spatial]
    rest = [p for p in net.parameters() if p is not net.memory.spatial]
    opt = torch.optim.Adam([{"params": rest, "lr": cfg.lr}, {"params": mem, "lr": cfg.memory_lr}])
    base_lrs = [g["lr"] for g in opt.param_groups]
    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    ckpt = ckdir / "last.safetensors"
    forge = ForgePool(cfg.forgers.pool, true_code.size, cfg) if cfg.forgers.pool and not twin else None
    if ckpt.exists():
        step, own = load_checkpoint(ckpt, net, opt, forge, rank)
        log(
            f"resumed from {ckpt} at step {step}"
            + ("" if own else f" (rank {rank} takes rank 0's forgers and RNG: the checkpoint is from fewer ranks)")
        )
    dev = torch.device(cfg.device)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    net.to(dev)
    if anchor_net is not None:
        anchor_net.to(dev)
        anchor_code = torch.from_numpy(anchor_code).to(dev)
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    meta = {"identifier": identifier, "model_id": model_id, "twin": twin, "train": asdict(cfg)}
    code_t = torch.from_numpy(true_code).to(dev)
    ident, negs, res, shift = cfg.identifier, cfg.negatives, cfg.research, cfg.research.mark_shift
    hinge_args = {f"w_{k}": getattr(cfg.fusion, f"{k}_weight") for k in HINGES} | {
        "sf_floor": cfg.fusion.sf_floor,
        "detail": cfg.fusion.detail,
        "w_under": cfg.fusion.undershoot_weight,
        "w_detail": cfg.fusion.detail_weight,
        "w_over": cfg.fusion.overshoot_weight,
        "headroom": cfg.fusion.headroom,
        "ceiling": cfg.fusion.ceiling,
        "w_bright": cfg.fusion.bright_weight,
        "w_base": cfg.fusion.base_weight,
    }

    def export(step_now: int, gather: bool = True) -> Path | None:
        """The checkpoint (every rank's own state, gathered to rank 0; with `gather` False, as after an interrupt
        when the other ranks may be gone, rank 0's alone) and the package; under torchrun every rank calls it
        with `gather`, and rank 0 writes."""
        states = [rank_tensors(forge)]
        if distributed and gather:
            states = [None] * world if rank == 0 else None
            torch.distributed.gather_object(rank_tensors(forge), states, dst=0)
        if rank != 0:
            return None
        save_checkpoint(ckpt, net, opt, step_now, meta | {"world_size": world}, gathered_tensors(states))
        verify = (
            {"threshold": DEFAULT_THRESHOLD}
            | ({"shift": shift} if shift else {})
            | ({"trace_strength": cfg.identifier.trace_strength} if cfg.identifier.trace_strength else {})
            | ({"public_strength": cfg.identifier.public_strength} if cfg.identifier.public_strength else {})
            | ({"dihedral": True} if cfg.identifier.dihedral and textures else {})
        )
        protection = {"twin": True} if twin else {"verify": verify}
        return save_package(
            out,
            net,
            model_id=model_id,
            key_id="" if twin else key.key_id,
            identifier=identifier,
            training={
                "data": "Harvard Whole Brain Atlas registered pairs, train split (CT/PET/SPECT-MRI, "
                f"{len(pairs)} pairs; PET/SPECT as luminance)",
                "steps": step_now,
                "world_size": world,
                "effective_batch": cfg.batch * world,
                **cfg.record(twin),
                **({"decoder_widened_at": init_step} if cfg.widen_decoder > 1 else {}),
                **({"anchor": anchor_record} if anchor_record else {}),  # the package anchored to, when not init
                **({"init": init_record} if init else {}),  # where the weights came from: its hash and record
            },
            **protection,
        )

    logf = open_log(ckdir / "metrics.csv", LOG_COLUMNS) if rank == 0 else None  # rank 0 logs for every rank
    writer = csv.writer(logf) if logf else None
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step")
    model.train()
    t0 = start = time.time()
    try:
        while step < cfg.steps:
            rng = np.random.default_rng([cfg.seed, step, rank])
            a, b, coords, mask, plain = (t.to(dev) for t in sample_batch(rng, a_all, b_all, cfg, mask_full))
            neg = torch.from_numpy(sample_negatives(rng, true_code, cfg.batch, step, cfg.negatives)).to(dev)
            if forge:  # the last negatives are the forgers' codes
                forged = forge.start(rng).to(dev).requires_grad_()
                if res.forge_repeat > 1:  # the extra Adam steps first, on this step's last crops, weights frozen
                    forged = forge.descend(net, a, b, coords, mask, res.forge_repeat - 1).to(dev).requires_grad_()
                recalled = forge.recall(rng, cfg.forgers.memory).to(dev)  # just before the forgers
                neg = torch.cat([neg[: cfg.batch - len(forged) - len(recalled)], recalled, forged])
            if twin:
                yk = model(a, b, code_t.expand(cfg.batch, -1), coords)
                loss, parts = fusion_loss(yk, a, b, **hinge_args)
                loss_m = loss_a = torch.zeros((), device=dev)
            else:
                codes, phases = torch.cat([code_t.expand(cfg.batch, -1), neg]), None
                if negs.partial_keys or negs.decoys:  # some sampled negatives (never the forgers' codes) become
                    sampled = cfg.batch - (len(forged) + len(recalled) if forge else 0)  # partial keys or decoys
                    u = rng.random(sampled) - negs.partial_keys
                    rows, decoy_rows = (cfg.batch + np.flatnonzero(c) for c in (u < 0, (u >= 0) & (u < negs.decoys)))
                    if len(rows) or len(decoy_rows):
                        phases = net.key.phases(codes)
                        phases[rows] = partial_key_phases(rng, phases[0].detach(), phases[rows].detach())
                        phases[decoy_rows] = decoy_phases(rng, phases[0].detach(), phases[decoy_rows].detach())
                y = model(a, b, codes, coords, phases)
                yk, yn = y[: cfg.batch], y[cfg.batch :]
                loss_f, parts = fusion_loss(yk, a, b, **hinge_args)
                alpha = ident.mark_alpha
                if ident.decoy_alpha:  # each wrong code's opacity from where its embedding points
                    ph = (net.key.phases(codes) if phases is None else phases).detach()
                    alpha = decoy_opacity(net.key.cosine(ph[cfg.batch :], ph[0]), ident)[:, None, None, None]
                target = marked_target(yk.detach(), mask, alpha, shift)
                if textures:
                    tex = sum(scale * texture(a, b, tw) for tw, scale in textures)
                    if forge and res.forge_untraced:  # the forgers' descent may drop the texture, never the mark
                        tex = torch.cat([tex[: cfg.batch - len(forged)], torch.zeros_like(tex[-len(forged) :])])
                    target = target + tex
                wmap = 1 + 9 * (gaussian_blur(mask, 2.0) > 0.02).float()
                loss_m = ((yn - target).abs() * wmap).mean() / wmap.mean()
                if forge:  # the forgers' step: the fusion loss of their own outputs, weights frozen
                    k = len(forged)
                    forge_loss = forge.objective(yn[-k:], a[-k:], b[-k:], mask[-k:])
                    forge.update(torch.autograd.grad(forge_loss, forged, retain_graph=True)[0])
                loss_a = torch.zeros((), device=dev)
                if ident.ablate_weight:
                    grid = {"memory.spatial": memory_surgery(net.memory.spatial, step)}
                    ya = torch.func.functional_call(net, grid, (a, b, neg.detach(), coords))
                    loss_a = torch.relu(ssim(ya, yk.detach()) - ident.ablate_ssim).mean()
                loss = loss_f + ident.mark_weight * loss_m + ident.ablate_weight * loss_a
            loss_k = torch.zeros((), device=dev)
            if anchor_net is not None:  # the keyed outputs stay near the anchor's on the same crops
                with torch.no_grad():
                    y0 = anchor_net(a, b, anchor_code.expand(cfg.batch, -1), coords)
                if plain.all():
                    loss_k = (yk - y0).abs().mean()
                else:  # zoomed and emptied crops are not anchored (Crops)
                    loss_k = (yk - y0).abs()[plain].mean() if plain.any() else yk.sum() * 0
                loss = loss + cfg.anchoring.weight * loss_k
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * lr_factor(step, cfg)
            opt.step()
            step += 1
            if rank == 0:
                parts_out = (f"{parts[k]:.5f}" for k in ("int", "grad", "ssim", *HINGES))
                writer.writerow(
                    [
                        step,
                        f"{loss.item():.5f}",
                        *parts_out,
                        f"{loss_m.item():.5f}",
                        f"{loss_a.item():.5f}",
                        f"{loss_k.item():.5f}",
                        f"{(time.time() - t0):.3f}",
                    ]
                )
                t0 = time.time()
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}", mark=f"{loss_m.item():.4f}")
            out_of_time = bool(cfg.minutes) and time.time() - start > 60 * cfg.minutes
            if distributed and cfg.minutes:  # one decision for all ranks: stop when any rank's time is up
                flag = torch.tensor([float(out_of_time)])
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
                if logf:
                    logf.flush()
                export(step)
            if out_of_time:
                if rank == 0:
                    log(f"time limit of {cfg.minutes} min reached at step {step}")
                break
        if distributed:  # no rank takes the process group down while rank 0 still writes or receives
            torch.distributed.barrier()
    except KeyboardInterrupt:
        if rank == 0:
            log(f"interrupted at step {step}; saving a checkpoint")
            export(step, gather=False)
        raise
    finally:
        if logf:
            logf.close()
        if bar:
            bar.close()
        if distributed:  # DDP's pending gloo work is freed before the group, not at interpreter exit (a SIGABRT)
            del model
            gc.collect()
            torch.distributed.destroy_process_group()
    return Path(out)
