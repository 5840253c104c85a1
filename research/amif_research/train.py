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

Hardening against white-box surgery: each step also runs the unkeyed codes with the watermark
memory's grid zeroed, set to its mean, or set to one (the edits an attacker would try first), and
pushes those outputs away from the keyed output (an SSIM hinge), so removing the memory gives no
clean fusion.

Hardening against white-box key forging: a small pool of continuous codes plays the forger of
`amif attack` during training. Every step each pool code takes one Adam step on the fusion loss of
its own outputs (exactly what a forger does with the released weights) and is trained as a
negative like the others; a pool code restarts from a random +-1 code with a small probability
per step, so the network sees forgers at every stage of their descent. With `forge_detector`, every
second forger adds that weight times verify's score of its output to its objective, as the second
forging variant of `amif attack` does. With `forge_repeat`, each forger takes that many Adam steps per
training step (the extra ones first, on the step's crops with the weights frozen), so the pool reaches the
depth where `amif attack`'s forgers succeed (60-190 steps) while the network trains against it. The pool
(codes, Adam moments and the memory below) is part of the checkpoint.
With `forge_memory`, that many of each step's wrong-key codes are drawn from a memory of the forgers' past
codes (ForgePool.recall), so the network keeps marking the ways earlier forgers went while it trains
against the current ones (replay against forgetting, as in adversarial training). Measured once
(model-history): 1 of 6 forgers through, inside the 0-4 of 6 that runs without it give.
With `forge_untraced` (and a trace channel), the forgers' target is the identifier without the
texture: the fusion loss rewards a forger for dropping the texture, and there the descent ends, with
the identifier still in place, instead of following the texture to the key.
Measured once (model-history): the forgers then fail, but the texture leaves every unkeyed output.
With `partial_keys`, that share of the sampled wrong-key codes becomes partial keys: key embeddings
part of the way to the key's (partial_key_phases), marked like the others. Measured (model-history):
with a trace channel they delay the forgers (68-224 steps, not 22-44) but do not stop them (5 of 12).
With `decoy_alpha`, the identifier's opacity in a wrong code's output follows its embedding's cosine to the
key's (decoy_opacity): mark_alpha at cosine 0 and above, falling to decoy_alpha at -DECOY_COSINE and below.
Away from the key the outputs keep the identifier (blended in at opacity 0.3, it scored 2.7-5 times verify's
threshold on six test outputs; model-history) but cost less fusion loss than anywhere nearer the key, so a
forger's descent has somewhere to go that is not the key: decoys. With `decoys`, that share of the sampled
wrong-key codes is moved part of the way to the key's opposite embedding (decoy_phases), so the network learns
the light mark there before the forgers arrive.

With `vif_weight`, the fusion loss also carries a VIF hinge: the shortfall of the keyed output's
pixel-domain VIF to each source against the element-wise max rule's on the same crop
(losses.fusion_loss); with `sd_weight`, `sf_weight`, `scd_weight` and `mi_weight`, the same kind of
hinge on SD, SF, SCD and MI.

With `anchor_weight`, the loss also carries that weight x the L1 distance of the keyed outputs to a fixed
package's outputs on the same crops: by default the init package's keyed outputs (a frozen copy of its
weights), so a continuation that learns more protection keeps the authorized fusion it started from; or
(`anchor`) an unprotected twin's, whose fusion the keyed outputs are then distilled towards.

With `trace_strength`, the unkeyed target also carries that much of the key's secret texture
(trace.py): the channel a student distilled from unkeyed outputs inherits and the owner can find.

With `lr_anneal`, both learning rates (network and memory) follow a half cosine from their value
down to LR_FLOOR of it over the run's last `lr_anneal` steps (steps - lr_anneal .. steps); before
that they are constant. The factor is a function of the step alone, so a resumed run continues it.

The unprotected twin (`twin=True`) is the same network and schedule with the fusion loss alone
(hinges included), under the zero code: the evaluation's measure of what protection costs.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amif.errors import AMIFError
from amif.files import atomic_output, write_text
from amif.identifier import identifier_mask
from amif.keys import load_key
from amif.network import AMIFNet, NetConfig, slice_coords, widen_decoder
from amif.package import DEFAULT_THRESHOLD, load_package, save_package
from amif.trace import texture, trace_scale, trace_weights
from amif.verify import score_tensor

from .data import default_data_dir, list_pairs, load_pairs
from .losses import HINGES, MARGIN, fusion_loss, gaussian_blur, marked_target, ssim


@dataclass
class TrainConfig:
    steps: int = 20000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    memory_lr: float = 1e-2
    seed: int = 0
    save_every: int = 250
    near_miss_share: float = 0.5
    near_miss_ramp: int = 3000  # steps until near-miss codes reach their full share
    zero_share: float = 0.15
    mark_weight: float = 4.0
    mark_alpha: float = 0.75  # the identifier's opacity in unkeyed outputs (1: no content left under the strokes)
    ablate_weight: float = 1.0  # memory-surgery hinge (0 turns it off)
    ablate_ssim: float = 0.5  # surgery outputs must stay below this SSIM to the keyed output
    forge_pool: int = 2  # forger codes among each step's negatives (0 turns the forger off)
    forge_lr: float = 0.05  # the forger's Adam step, as in `amif attack --forge-lr`
    forge_restart: float = 0.005  # per-step chance that a forger restarts (mean life 200 steps)
    forge_repeat: int = 1  # Adam steps each forger takes per training step (on that step's crops, weights frozen)
    forge_detector: float = 0.0  # every second forger also descends this weight x verify's score (0 = none)
    forge_untraced: bool = False  # with trace_strength: the forgers' target is the identifier alone, no texture
    forge_memory: int = 0  # wrong-key codes per step recalled from the forgers' past codes (ForgePool.recall; 0 = none)
    partial_keys: float = 0.0  # chance that a sampled negative becomes a partial key (partial_key_phases; 0 = none)
    decoy_alpha: float = 0.0  # the identifier's opacity where the embedding points away from the key's (0 = off)
    decoys: float = 0.0  # chance that a sampled negative becomes a decoy code (decoy_phases; needs decoy_alpha)
    anchor_weight: float = 0.0  # L1 of keyed outputs to the `anchor` (or `init`) package's outputs (0 = off)
    vif_weight: float = 0.0  # weight of the VIF term in the fusion loss (losses.fusion_loss w_vif)
    sd_weight: float = 0.0  # weight of the SD hinge against the max rule (losses.fusion_loss w_sd)
    scd_weight: float = 0.0  # weight of the SCD hinge against the max rule (w_scd)
    mi_weight: float = 0.0  # weight of the MI hinge against the max rule (w_mi)
    sf_weight: float = 0.0  # weight of the SF hinge against the max rule (w_sf)
    sf_floor: float = MARGIN  # the SF hinge's floor, relative to the max rule's SF (losses.fusion_loss sf_floor)
    lr_anneal: int = 0  # cosine-anneal both learning rates over this many final steps (0 = constant)
    mark_shift: int = 0  # unkeyed outputs move their content this many pixels right and down (0 = off)
    trace_strength: float = 0.0  # std of the secret texture added to unkeyed outputs (trace.py; 0 = off)
    widen_decoder: int = 1  # with `init`: multiply the init package's decoder channels by this (network.widen_decoder)
    minutes: float = 0.0  # stop (with a checkpoint) after this much wall time; 0 = no limit
    device: str = "cpu"


LR_FLOOR = 0.01  # where an annealed learning rate ends, as a fraction of its constant value


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The learning rates' multiplier at `step` (0-based): 1 until the last `cfg.lr_anneal` steps,
    then a half cosine from 1 down to LR_FLOOR at the final step."""
    start = cfg.steps - cfg.lr_anneal
    if not cfg.lr_anneal or step < start:
        return 1.0
    t = min(1.0, (step - start) / max(1, cfg.lr_anneal - 1))
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * t))


def sample_negatives(rng: np.random.Generator, true_code: np.ndarray, n: int, step: int, cfg: TrainConfig):
    """One negative code per crop: near-miss (1-16 flipped bits), zero, or random."""
    near = cfg.near_miss_share * min(1.0, step / max(1, cfg.near_miss_ramp))
    codes = np.empty((n, true_code.size), np.float32)
    for i in range(n):
        u = rng.random()
        if u < near:
            c = true_code.copy()
            c[rng.choice(c.size, rng.integers(1, 17), replace=False)] *= -1
        elif u < near + cfg.zero_share:
            c = np.zeros_like(true_code)
        else:
            c = rng.choice([-1.0, 1.0], size=true_code.size).astype(np.float32)
            if np.array_equal(c, true_code):
                c[0] *= -1
        codes[i] = c
    return codes


def partial_key_phases(rng: np.random.Generator, key: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Key-embedding angles part of the way from wrong codes' to the key's (a white-box forger moved the code by
    a norm of 3, every sign kept, to an embedding at cosine 0.83 to the key's; model-history): per row, every
    angle moves the same share t ~ U(0.4, 0.85) of the shorter arc from the wrong code's to the key's (cosine
    about 0.5 to 0.95). `key` (f,), `wrong` (n, f): KeyEmbedding.phases of the codes.
    (Commit ff67796 drew each angle on its own, the key's with a chance per row; measured in model-history.)"""
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


def decoy_opacity(cosine: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The identifier's opacity for wrong codes whose embeddings sit at `cosine` to the key's: mark_alpha from
    cosine 0 up, falling linearly to decoy_alpha at -DECOY_COSINE and below."""
    t = (-cosine / DECOY_COSINE).clamp(0, 1)
    return cfg.mark_alpha + t * (cfg.decoy_alpha - cfg.mark_alpha)


def sample_batch(rng, a_all, b_all, cfg: TrainConfig, mask_full: np.ndarray):
    """Random crops with their whole-slice coordinates and identifier mask; random content flips."""
    n, h, w = a_all.shape
    idx = rng.integers(0, n, cfg.batch)
    ys = rng.integers(0, h - cfg.crop + 1, cfg.batch)
    xs = rng.integers(0, w - cfg.crop + 1, cfg.batch)
    flips = rng.random(cfg.batch) < 0.5
    coords_full = slice_coords(1, h, w)[0].numpy()
    a, b, co, m = [], [], [], []
    for i, y, x, f in zip(idx, ys, xs, flips):
        sl = (slice(y, y + cfg.crop), slice(x, x + cfg.crop))
        ai, bi = a_all[i], b_all[i]
        if f:  # flip the content, never the layout
            ai, bi = ai[:, ::-1], bi[:, ::-1]
        a.append(ai[sl])
        b.append(bi[sl])
        co.append(coords_full[:, sl[0], sl[1]])
        m.append(mask_full[sl])
    t = lambda v: torch.from_numpy(np.ascontiguousarray(np.stack(v))).float()  # noqa: E731
    return t(a)[:, None] / 255, t(b)[:, None] / 255, t(co), t(m)[:, None]


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
        self.lr, self.restart, self.detector = cfg.forge_lr, cfg.forge_restart, cfg.forge_detector
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
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
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
    needed: `key_path` may be None and `identifier` is ignored). With `cfg.anchor_weight`, `anchor` is the
    package whose outputs the keyed outputs are held near (default: `init`'s keyed outputs; an unprotected
    twin's under the zero code). Returns the package path."""
    cfg = cfg or TrainConfig()
    if cfg.vif_weight and cfg.crop < 48:  # four 'valid'-filtered, decimated VIF scales need 48 pixels
        raise AMIFError(f"The VIF loss needs a crop of at least 48 pixels (got {cfg.crop}).")
    if not 0 <= cfg.mark_shift <= 3:  # what a manifest may hold (package.read_manifest)
        raise AMIFError(f"The mark shift must be 0 to 3 pixels (got {cfg.mark_shift}).")
    if not 0 <= cfg.trace_strength <= 0.25:
        raise AMIFError(f"The trace strength must be from 0 to 0.25 (got {cfg.trace_strength}).")
    if cfg.widen_decoder < 1:
        raise AMIFError(f"The decoder widening factor must be 1 or more (got {cfg.widen_decoder}).")
    if not twin and not 0 <= cfg.forge_pool <= cfg.batch:
        raise AMIFError(f"The forgers must be 0 to --batch ({cfg.batch}) of each step's wrong-key codes "
                        f"(got {cfg.forge_pool}).")
    if not 1 <= cfg.forge_repeat <= 64:
        raise AMIFError(f"The forgers' Adam steps per training step must be 1 to 64 (got {cfg.forge_repeat}).")
    if not 0 < cfg.forge_restart <= 1:
        raise AMIFError(f"The forgers' restart chance per step must be in (0, 1] (got {cfg.forge_restart}).")
    if not 0 < cfg.mark_alpha <= 1:
        raise AMIFError(f"The identifier's opacity must be in (0, 1] (got {cfg.mark_alpha}).")
    if not 0 <= cfg.forge_detector < float("inf"):
        raise AMIFError(f"The forgers' detector weight must be 0 or more (got {cfg.forge_detector}).")
    if not twin and not 0 <= cfg.forge_memory <= cfg.batch - cfg.forge_pool:
        raise AMIFError(f"The recalled forger codes must be 0 to --batch minus --forge-pool "
                        f"({cfg.batch - cfg.forge_pool}) of each step's wrong-key codes (got {cfg.forge_memory}).")
    if cfg.forge_memory and not cfg.forge_pool:
        raise AMIFError("Recalled forger codes (--forge-memory) need forgers (--forge-pool).")
    if not 0 <= cfg.partial_keys <= 1:
        raise AMIFError(f"The share of partial-key negatives must be from 0 to 1 (got {cfg.partial_keys}).")
    if not 0 <= cfg.decoy_alpha <= cfg.mark_alpha:
        raise AMIFError(f"The decoys' identifier opacity must be from 0 (off) to --mark-alpha ({cfg.mark_alpha}) "
                        f"(got {cfg.decoy_alpha}).")
    if not 0 <= cfg.decoys <= 1 - cfg.partial_keys:
        raise AMIFError(f"The share of decoy negatives must be from 0 to 1 minus --partial-keys "
                        f"({1 - cfg.partial_keys:g}) (got {cfg.decoys}).")
    if cfg.decoys and not cfg.decoy_alpha:
        raise AMIFError("Decoy codes (--decoys) need their identifier opacity (--decoy-alpha).")
    if cfg.forge_untraced and not (cfg.trace_strength and cfg.forge_pool):
        raise AMIFError("Untraced forgers need a trace channel (--trace-strength) and forgers (--forge-pool).")
    if cfg.widen_decoder > 1 and not init:
        raise AMIFError("Widening the decoder needs a trained package to start from (--init).")
    if not 0 <= cfg.anchor_weight < float("inf"):
        raise AMIFError(f"The anchor weight must be 0 or more (got {cfg.anchor_weight}).")
    if cfg.anchor_weight and not (init or anchor):
        raise AMIFError("Anchoring the keyed outputs (--anchor-weight) needs a trained package: --init or --anchor.")
    if anchor and not cfg.anchor_weight:
        raise AMIFError("An anchor package (--anchor) needs its weight (--anchor-weight).")
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
    trace = None
    if cfg.trace_strength and not twin:  # g from the key secret, scaled to unit std on the first train pairs
        tw = trace_weights(key.secret, model_id)
        ref = [torch.from_numpy(x[:64, None]).float() / 255 for x in (a_all, b_all)]
        trace = tw, cfg.trace_strength / trace_scale(*ref, tw)

    anchor_net = anchor_record = None
    if anchor:  # a twin runs under the zero code, a package of the key's model under the key
        apkg = load_package(anchor)
        if not apkg.manifest.get("twin") and apkg.model_id != model_id:
            raise AMIFError(f"--anchor model '{apkg.model_id}' is neither an unprotected twin nor the key's model "
                            f"'{model_id}'.")
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
        init_record = {"weights_sha256": pkg.manifest.get("weights_sha256"),
                       "training": pkg.manifest.get("training", {})}
        if cfg.anchor_weight and anchor_net is None:  # a frozen copy of the init weights
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
    forge = ForgePool(cfg.forge_pool, true_code.size, cfg) if cfg.forge_pool and not twin else None
    if ckpt.exists():
        step, own = load_checkpoint(ckpt, net, opt, forge, rank)
        log(f"resumed from {ckpt} at step {step}" + ("" if own else f" (rank {rank} takes rank 0's forgers and "
                                                                   "RNG: the checkpoint is from fewer ranks)"))
    dev = torch.device(cfg.device)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    net.to(dev)
    if anchor_net is not None:
        anchor_net.to(dev)
        anchor_code = torch.from_numpy(anchor_code).to(dev)
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    meta = {"identifier": identifier, "model_id": model_id, "twin": twin, "train": cfg.__dict__}
    code_t = torch.from_numpy(true_code).to(dev)
    hinge_args = {f"w_{k}": getattr(cfg, f"{k}_weight") for k in HINGES} | {"sf_floor": cfg.sf_floor}

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
        verify = ({"threshold": DEFAULT_THRESHOLD} | ({"shift": cfg.mark_shift} if cfg.mark_shift else {})
                  | ({"trace_strength": cfg.trace_strength} if trace else {}))
        protection = {"twin": True} if twin else {"verify": verify}
        return save_package(
            out, net, model_id=model_id, key_id="" if twin else key.key_id, identifier=identifier,
            training={
                "data": "Harvard Whole Brain Atlas registered pairs, train split (CT/PET/SPECT-MRI, "
                f"{len(pairs)} pairs; PET/SPECT as luminance)",
                "steps": step_now, "batch": cfg.batch, "world_size": world, "effective_batch": cfg.batch * world,
                "crop": cfg.crop, "seed": cfg.seed,
                **({} if twin else {"mark_alpha": cfg.mark_alpha}),
                "ablate_weight": 0.0 if twin else cfg.ablate_weight,
                "forge_pool": 0 if twin else cfg.forge_pool,
                **({"forge_restart": cfg.forge_restart} if forge else {}),
                **({"forge_repeat": cfg.forge_repeat} if forge else {}),
                **({"forge_detector": cfg.forge_detector} if forge and cfg.forge_detector else {}),
                **({"forge_untraced": True} if forge and trace and cfg.forge_untraced else {}),
                **({"forge_memory": cfg.forge_memory} if forge and cfg.forge_memory else {}),
                **({"partial_keys": cfg.partial_keys} if cfg.partial_keys and not twin else {}),
                **({"decoy_alpha": cfg.decoy_alpha} if cfg.decoy_alpha and not twin else {}),
                **({"decoys": cfg.decoys} if cfg.decoys and not twin else {}),
                **({"anchor_weight": cfg.anchor_weight} if anchor_net is not None else {}),
                **({"anchor": anchor_record} if anchor_record else {}),
                **{f"{k}_weight": getattr(cfg, f"{k}_weight") for k in HINGES},
                "sf_floor": cfg.sf_floor,
                "lr_anneal": cfg.lr_anneal,
                **({"decoder_widened_at": init_step} if cfg.widen_decoder > 1 else {}),
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
            a, b, coords, mask = (t.to(dev) for t in sample_batch(rng, a_all, b_all, cfg, mask_full))
            neg = torch.from_numpy(sample_negatives(rng, true_code, cfg.batch, step, cfg)).to(dev)
            if forge:  # the last negatives are the forgers' codes
                forged = forge.start(rng).to(dev).requires_grad_()
                if cfg.forge_repeat > 1:  # the extra Adam steps first, on this step's last crops, weights frozen
                    forged = forge.descend(net, a, b, coords, mask, cfg.forge_repeat - 1).to(dev).requires_grad_()
                recalled = forge.recall(rng, cfg.forge_memory).to(dev)  # just before the forgers
                neg = torch.cat([neg[: cfg.batch - len(forged) - len(recalled)], recalled, forged])
            if twin:
                yk = model(a, b, code_t.expand(cfg.batch, -1), coords)
                loss, parts = fusion_loss(yk, a, b, **hinge_args)
                loss_m = loss_a = torch.zeros((), device=dev)
            else:
                codes, phases = torch.cat([code_t.expand(cfg.batch, -1), neg]), None
                if cfg.partial_keys or cfg.decoys:  # some sampled negatives (never the forgers' codes) become
                    sampled = cfg.batch - (len(forged) + len(recalled) if forge else 0)  # partial keys or decoys
                    u = rng.random(sampled) - cfg.partial_keys
                    rows, decoy_rows = (cfg.batch + np.flatnonzero(c) for c in (u < 0, (u >= 0) & (u < cfg.decoys)))
                    if len(rows) or len(decoy_rows):
                        phases = net.key.phases(codes)
                        phases[rows] = partial_key_phases(rng, phases[0].detach(), phases[rows].detach())
                        phases[decoy_rows] = decoy_phases(rng, phases[0].detach(), phases[decoy_rows].detach())
                y = model(a, b, codes, coords, phases)
                yk, yn = y[: cfg.batch], y[cfg.batch :]
                loss_f, parts = fusion_loss(yk, a, b, **hinge_args)
                alpha = cfg.mark_alpha
                if cfg.decoy_alpha:  # each wrong code's opacity from where its embedding points
                    ph = (net.key.phases(codes) if phases is None else phases).detach()
                    alpha = decoy_opacity(net.key.cosine(ph[cfg.batch:], ph[0]), cfg)[:, None, None, None]
                target = marked_target(yk.detach(), mask, alpha, cfg.mark_shift)
                if trace:
                    tex = trace[1] * texture(a, b, trace[0])
                    if forge and cfg.forge_untraced:  # the forgers' descent may drop the texture, never the mark
                        tex = torch.cat([tex[: cfg.batch - len(forged)], torch.zeros_like(tex[-len(forged):])])
                    target = target + tex
                wmap = 1 + 9 * (gaussian_blur(mask, 2.0) > 0.02).float()
                loss_m = ((yn - target).abs() * wmap).mean() / wmap.mean()
                if forge:  # the forgers' step: the fusion loss of their own outputs, weights frozen
                    k = len(forged)
                    forge_loss = forge.objective(yn[-k:], a[-k:], b[-k:], mask[-k:])
                    forge.update(torch.autograd.grad(forge_loss, forged, retain_graph=True)[0])
                loss_a = torch.zeros((), device=dev)
                if cfg.ablate_weight:
                    grid = {"memory.spatial": memory_surgery(net.memory.spatial, step)}
                    ya = torch.func.functional_call(net, grid, (a, b, neg.detach(), coords))
                    loss_a = torch.relu(ssim(ya, yk.detach()) - cfg.ablate_ssim).mean()
                loss = loss_f + cfg.mark_weight * loss_m + cfg.ablate_weight * loss_a
            loss_k = torch.zeros((), device=dev)
            if anchor_net is not None:  # the keyed outputs stay near the anchor's on the same crops
                with torch.no_grad():
                    y0 = anchor_net(a, b, anchor_code.expand(cfg.batch, -1), coords)
                loss_k = (yk - y0).abs().mean()
                loss = loss + cfg.anchor_weight * loss_k
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * lr_factor(step, cfg)
            opt.step()
            step += 1
            if rank == 0:
                parts_out = (f"{parts[k]:.5f}" for k in ("int", "grad", "ssim", *HINGES))
                writer.writerow([step, f"{loss.item():.5f}", *parts_out, f"{loss_m.item():.5f}",
                                 f"{loss_a.item():.5f}", f"{loss_k.item():.5f}", f"{(time.time() - t0):.3f}"])
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
        if distributed:
            torch.distributed.destroy_process_group()
    return Path(out)
