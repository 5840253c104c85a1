"""Learned attacks for `amif attack`: removal, distillation and white-box fine-tuning.

All three train a network on the attacker's own images: pairs of the data folder's train split
(never the attacked test pairs), run through the released model without a key. The attacked
model's weights are the attacker's (it is openly distributed); the owner's key is not.

* ``learned-removal``: a U-Net remover maps (unkeyed output, MRI, other source) to the keyed
  output, trained on N leaked (unkeyed, keyed) output pairs, N from `--learn-images`; then run on
  the unkeyed outputs of the attacked pairs. The strongest black-box attacker.
* ``distillation``: a student (a U-Net, and a plain CNN) trained on (sources, unkeyed output) of
  the attacker's images, then run on the attacked pairs. Target: >= 95% of its outputs flagged.
* ``fine-tuning``: the released weights trained further with the fusion loss under the zero code
  (no key) on N unlabelled pairs, against the same architecture trained from scratch on the same
  pairs and steps. Both are scored along the way: where fine-tuning first gives unflagged outputs at
  keyed quality is the cost of removing the protection; scratch is what the attacker would pay
  without the released weights.

Networks are small and each is one idea; steps, batch, crop and learning rate are shared options
(`--learn-steps` ...). Progress and cost (images, steps, seconds) as for every attack.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(cout, cout, 3, 1, 1), nn.LeakyReLU(0.2)
    )


class UNet(nn.Module):
    """Two-level U-Net; predicts a residual over input channel 0, clamped to [0, 1]."""

    def __init__(self, cin: int, base: int = 16):
        super().__init__()
        self.e1, self.e2, self.e3 = _block(cin, base), _block(base, 2 * base), _block(2 * base, 4 * base)
        self.d2, self.d1 = _block(6 * base, 2 * base), _block(3 * base, base)
        self.out = nn.Conv2d(base, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
        e1 = self.e1(xp)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        d2 = self.d2(torch.cat([up(e3), e2], 1))
        d1 = self.d1(torch.cat([up(d2), e1], 1))
        return (x[:, :1] + self.out(d1)[..., :h, :w]).clamp(0, 1)


class PlainCNN(nn.Module):
    """Six 3x3 convolutions at full resolution; a residual over input channel 0, clamped to [0, 1]."""

    def __init__(self, cin: int, width: int = 32, depth: int = 6):
        super().__init__()
        layers = [nn.Conv2d(cin, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] + self.body(x)).clamp(0, 1)


STUDENTS = {"U-Net": UNet, "plain CNN": PlainCNN}


def _crops(rng: np.random.Generator, arrays: list[np.ndarray], idx: np.ndarray, batch: int, crop: int):
    """The same random crops (batch, len(arrays), crop, crop) of images `idx` of every (n, h, w) array."""
    h, w = arrays[0].shape[1:]
    ch, cw = min(crop, h), min(crop, w)
    pick = rng.choice(idx, batch)
    ys, xs = rng.integers(0, h - ch + 1, batch), rng.integers(0, w - cw + 1, batch)
    out = np.stack([np.stack([arr[i, y : y + ch, x : x + cw] for arr in arrays]) for i, y, x in zip(pick, ys, xs)])
    return torch.from_numpy(np.ascontiguousarray(out, np.float32))


def fit(
    model: nn.Module, inputs: list[np.ndarray], target: np.ndarray, idx: np.ndarray, opts, seed: int, bar=None
) -> float:
    """L1 regression of `target` from `inputs` on random crops of images `idx`; returns seconds."""
    t0 = time.perf_counter()
    dev = torch.device(opts.device)
    model.to(dev).train()
    adam = torch.optim.Adam(model.parameters(), lr=opts.learn_lr)
    rng = np.random.default_rng(seed)
    for _ in range(opts.learn_steps):
        x = _crops(rng, [*inputs, target], idx, opts.learn_batch, opts.learn_crop).to(dev)
        loss = (model(x[:, :-1]) - x[:, -1:]).abs().mean()
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        if bar:
            bar.update(1)
    model.eval()
    return time.perf_counter() - t0


def apply(model: nn.Module, inputs: list[np.ndarray], device, batch: int = 8) -> np.ndarray:
    """Run a trained attacker network over (n, h, w) input stacks."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs[0]), batch):
            x = torch.from_numpy(np.ascontiguousarray(np.stack([v[i : i + batch] for v in inputs], 1), np.float32))
            out.append(model(x.to(device))[:, 0].float().cpu().numpy())
    return np.concatenate(out)


def _pool(target) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's own pairs (float32 in [0, 1])."""
    from amif.errors import AMIFError

    if target.pool is None:
        raise AMIFError(
            "Learned attacks need the attacker's own images: the train split of the data folder (none was given)."
        )
    return target.pool


def _subset(n_pool: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n_pool)[:n])


def _released_outputs(target, idx: np.ndarray, keyed: bool = False) -> np.ndarray:
    """The released model's outputs on the attacker's pairs `idx` (no key, or the owner's code for the
    leaked keyed outputs); kept on the target, so the remover and the students share one run."""
    cache = target.__dict__.setdefault("_released_outputs", {})
    k = (keyed, idx.tobytes())
    if k not in cache:
        a, b = target.pool
        cache[k] = target.outputs(a[idx], b[idx], target.code if keyed else None)
    return cache[k]


def _row_measure(m) -> list[str]:
    from .attack import db, pct

    return [pct(m.flagged), f"{db(m.psnr.mean())} dB · {m.ssim.mean():.3f}", pct(m.broken)]


def learned_removal(target, opts, progress: bool = True):
    from .attack import SUCCESS_SHARE, AttackResult, Measure, image_counts, pct, progress_bar, yes_no

    t0 = time.perf_counter()
    pa, pb = _pool(target)
    counts = image_counts(opts.learn_images, len(pa))
    rng_idx = _subset(len(pa), max(counts), opts.seed)
    leak_a, leak_b = pa[rng_idx], pb[rng_idx]
    leak_unkeyed, leak_keyed = _released_outputs(target, rng_idx), _released_outputs(target, rng_idx, keyed=True)
    before = Measure.of(target, target.unkeyed, quality_db=opts.quality_db)
    fig = target.figure_target()
    rows, data, figure = [], [], [("keyed", fig.keyed[0]), ("unkeyed", fig.unkeyed[0])]
    with progress_bar(len(counts) * opts.learn_steps, "learned removal", progress) as bar:
        for n in counts:
            torch.manual_seed(opts.seed)
            remover = UNet(3)
            secs = fit(remover, [leak_unkeyed, leak_a, leak_b], leak_keyed, np.arange(n), opts, opts.seed + n, bar)
            out = apply(remover, [target.unkeyed, target.a, target.b], opts.device)
            m = Measure.of(target, out, quality_db=opts.quality_db)
            gain = m.psnr.mean() - before.psnr.mean()
            ok = bool(m.flagged >= 0.95 or gain < 0)
            cost = f"{n} / {opts.learn_steps:,} / {secs:.0f}"
            rows.append([str(n), *_row_measure(m), f"{gain:+.1f}", yes_no(ok), cost])
            data.append(
                {
                    "images": n,
                    **m.summary(),
                    "psnr_before": float(before.psnr.mean()),
                    "met": ok,
                    "steps": opts.learn_steps,
                    "seconds": secs,
                }
            )
            figure.append((f"remover N={n}", apply(remover, [fig.unkeyed, fig.a, fig.b], opts.device)[0]))
    met = all(d["met"] for d in data)
    summary = "; ".join(
        f"N={d['images']}: {pct(d['flagged'])} flagged, {pct(d['broken'])} unflagged at keyed quality" for d in data
    )
    return AttackResult(
        "learned-removal",
        "Learned removal (U-Net remover on N leaked output pairs)",
        ">= 95% still flagged, or PSNR to the keyed output lower than the unkeyed output's (as for classical removal)",
        met,
        summary,
        [
            "leaked pairs N",
            "flagged",
            "PSNR · SSIM to keyed",
            "unflagged at keyed quality",
            "gain (dB)",
            "met",
            "cost: images / steps / s",
        ],
        rows,
        data,
        [
            f"The remover (a {sum(p.numel() for p in remover.parameters()):,}-parameter U-Net, input: unkeyed output "
            "and both sources; residual over the unkeyed output) is trained with L1 to the keyed output on N "
            f"(unkeyed, keyed) pairs of the train split, {opts.learn_steps:,} Adam steps (lr {opts.learn_lr:g}, batch "
            f"{opts.learn_batch}, {opts.learn_crop}-pixel crops), then run on the unkeyed outputs of the attacked "
            f"pairs. Before the attack the unkeyed outputs are {pct(before.flagged)} flagged at "
            f"{before.psnr.mean():.1f} dB to keyed. An attacker *succeeds* on an image when it is unflagged with "
            f"PSNR >= {opts.quality_db:g} dB; the attack succeeds on >= {SUCCESS_SHARE:.0%} of images."
        ],
        time.perf_counter() - t0,
        [figure],
    )


def distil(cls, a: np.ndarray, b: np.ndarray, teacher: np.ndarray, opts, bar=None):
    """A student network `cls` trained as the distillation attack trains one: L1 from the sources (and their
    mean, the residual's base) of pairs `a`, `b` to the `teacher`'s outputs on them. Returns it (on
    opts.device) and its training seconds; `run(student, a, b)` gives its outputs."""
    torch.manual_seed(opts.seed)
    student = cls(3)
    secs = fit(student, [(a + b) / 2, a, b], teacher, np.arange(len(a)), opts, opts.seed, bar)
    return student, secs


def run(student, a: np.ndarray, b: np.ndarray, device: str = "cpu") -> np.ndarray:
    """A student's outputs on pairs `a`, `b` (the inputs `distil` trained it on)."""
    return apply(student, [(a + b) / 2, a, b], device)


def distillation(target, opts, progress: bool = True):
    from .attack import AttackResult, Measure, db, image_counts, pct, progress_bar, psnr, yes_no

    t0 = time.perf_counter()
    pa, pb = _pool(target)
    n = max(image_counts(opts.learn_images, len(pa)))
    idx = _subset(len(pa), n, opts.seed)
    sa, sb = pa[idx], pb[idx]
    teacher = _released_outputs(target, idx)
    fig = target.figure_target()
    rows, data, figure = [], [], [("keyed", fig.keyed[0]), ("unkeyed", fig.unkeyed[0])]
    with progress_bar(len(STUDENTS) * opts.learn_steps, "distillation", progress) as bar:
        for label, cls in STUDENTS.items():
            student, secs = distil(cls, sa, sb, teacher, opts, bar)
            out = run(student, target.a, target.b, opts.device)
            m = Measure.of(target, out, quality_db=opts.quality_db)
            fidelity = psnr(out, target.unkeyed)
            ok = m.flagged >= 0.95
            params = sum(p.numel() for p in student.parameters())
            rows.append(
                [
                    label,
                    f"{params:,}",
                    *_row_measure(m),
                    f"{db(fidelity.mean())} dB",
                    yes_no(ok),
                    f"{n} / {opts.learn_steps:,} / {secs:.0f}",
                ]
            )
            data.append(
                {
                    "student": label,
                    "parameters": params,
                    **m.summary(),
                    "psnr_to_teacher": float(fidelity.mean()),
                    "met": bool(ok),
                    "images": n,
                    "steps": opts.learn_steps,
                    "seconds": secs,
                }
            )
            figure.append((f"student {label}", run(student, fig.a, fig.b, opts.device)[0]))
    met = all(d["met"] for d in data)
    summary = "; ".join(f"{d['student']}: {pct(d['flagged'])} flagged, {d['psnr_mean']:.1f} dB to keyed" for d in data)
    return AttackResult(
        "distillation",
        "Distillation (students trained on the unkeyed outputs)",
        ">= 95% of the students' outputs flagged",
        met,
        summary,
        [
            "student",
            "parameters",
            "flagged",
            "PSNR · SSIM to keyed",
            "unflagged at keyed quality",
            "PSNR to the teacher's unkeyed output",
            "met",
            "cost: images / steps / s",
        ],
        rows,
        data,
        [
            f"Each student maps the two sources (and their mean, the residual's base) to the released model's unkeyed "
            f"output, L1, on {n} pairs of the train split, {opts.learn_steps:,} Adam steps (lr {opts.learn_lr:g}, "
            f"batch {opts.learn_batch}, {opts.learn_crop}-pixel crops); it never sees a keyed output. Then it runs on "
            "the attacked pairs."
            + (
                " 'Flagged' counts the owner's trace check as well (this model's unkeyed outputs carry the key's secret "
                "texture: `verify --key`); the students' outputs it alone flags: "
                + ", ".join(f"{d['student']} {pct(d['traced'])}" for d in data)
                + "."
                if target.trace is not None
                else ""
            )
        ],
        time.perf_counter() - t0,
        [figure],
    )


def _eval_steps(total: int) -> list[int]:
    """0 and a roughly geometric series up to `total` (about 8 points)."""
    pts = {0, total}
    for f in (0.01, 0.025, 0.05, 0.1, 0.25, 0.5):
        pts.add(int(round(total * f)))
    return sorted(pts)


def _tune(net, pa, pb, idx, opts, seed, evaluate, bar) -> tuple[list, float]:
    """Fusion-loss training of `net` under the zero code on crops of pairs `idx`; `evaluate(net, step)` at the
    evaluation steps. Returns the evaluations and the training seconds (evaluation excluded)."""
    from .losses import fusion_loss
    from .train import TrainConfig, sample_batch

    dev = torch.device(opts.device)
    net.to(dev).train().requires_grad_(True)
    adam = torch.optim.Adam(net.parameters(), lr=opts.learn_lr)
    cfg = TrainConfig(batch=opts.learn_batch, crop=min(opts.learn_crop, *pa.shape[1:]))
    a8, b8 = (np.round(x[idx] * 255) for x in (pa, pb))
    mask = np.zeros(pa.shape[1:], np.float32)
    zero = torch.zeros(net.cfg.key_bits, device=dev)
    checks, secs, evals = _eval_steps(opts.learn_steps), 0.0, []
    for step in range(opts.learn_steps + 1):
        if step in checks:
            net.eval()
            evals.append(evaluate(net, step))
            net.train()
        if step == opts.learn_steps:
            break
        t1 = time.perf_counter()
        rng = np.random.default_rng([seed, step])
        a, b, coords, _, _ = (t.to(dev) for t in sample_batch(rng, a8, b8, cfg, mask))
        loss = fusion_loss(net(a, b, zero.expand(len(a), -1), coords), a, b)[0]
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        secs += time.perf_counter() - t1
        bar.update(1)
    net.eval().requires_grad_(False)
    return evals, secs


def fine_tuning(target, opts, progress: bool = True):
    import copy

    from amif.network import AMIFNet

    from .attack import SUCCESS_SHARE, AttackResult, Measure, db, image_counts, pct, progress_bar, yes_no

    t0 = time.perf_counter()
    pa, pb = _pool(target)
    counts = image_counts(opts.learn_images, len(pa))
    fig = target.figure_target()
    rows, data, figure = [], [], [("keyed", fig.keyed[0]), ("unkeyed", fig.unkeyed[0])]

    def evaluate(net, step):
        m = Measure.of(target, target.outputs(target.a, target.b, net=net), quality_db=opts.quality_db)
        return {
            "step": step,
            "flagged": m.flagged,
            "broken": m.broken,
            "psnr_mean": float(m.psnr.mean()),
            "ssim_mean": float(m.ssim.mean()),
        }

    first = lambda ev, key, ok: next((e["step"] for e in ev if ok(e[key])), None)  # noqa: E731
    with progress_bar(2 * len(counts) * opts.learn_steps, "fine-tuning", progress) as bar:
        for n in counts:
            idx = _subset(len(pa), n, opts.seed)
            runs = {}
            for start in ("released", "scratch"):
                torch.manual_seed(opts.seed)
                net = copy.deepcopy(target.package.net) if start == "released" else AMIFNet(target.package.net.cfg)
                evals, secs = _tune(net, pa, pb, idx, opts, opts.seed + n, evaluate, bar)
                runs[start] = {
                    "evals": evals,
                    "seconds": secs,
                    "unflagged_step": first(evals, "flagged", lambda f: f <= 0.05),
                    "success_step": first(evals, "broken", lambda s: s >= SUCCESS_SHARE),
                }
                if n == counts[-1]:
                    figure.append((f"{start} +{opts.learn_steps} steps", target.outputs(fig.a, fig.b, net=net)[0]))
            ft, sc = runs["released"], runs["scratch"]
            end_ft, end_sc = ft["evals"][-1], sc["evals"][-1]
            ok = ft["success_step"] is None
            step_txt = lambda s: "—" if s is None else f"{s:,}"  # noqa: E731
            rows.append(
                [
                    str(n),
                    step_txt(ft["unflagged_step"]),
                    step_txt(ft["success_step"]),
                    step_txt(sc["success_step"]),
                    f"{pct(end_ft['flagged'])} · {db(end_ft['psnr_mean'])} dB",
                    f"{db(end_sc['psnr_mean'])} dB",
                    yes_no(ok),
                    f"{n} / {opts.learn_steps:,} / {ft['seconds']:.0f} (+{sc['seconds']:.0f} scratch)",
                ]
            )
            data.append(
                {
                    "images": n,
                    "steps": opts.learn_steps,
                    "fine_tuned": ft,
                    "scratch": sc,
                    "met": ok,
                    "seconds": ft["seconds"] + sc["seconds"],
                }
            )
    summary = "; ".join(
        f"N={d['images']}: "
        + (
            f"unflagged at keyed quality after {d['fine_tuned']['success_step']:,} steps"
            if d["fine_tuned"]["success_step"] is not None
            else f"not removed within {d['steps']:,} steps"
        )
        + (
            f" (scratch: {d['scratch']['success_step']:,})"
            if d["scratch"]["success_step"] is not None
            else " (scratch: not at keyed quality)"
        )
        for d in data
    )
    return AttackResult(
        "fine-tuning",
        "White-box fine-tuning (released weights, fusion loss, no key)",
        f"report the cost; met here means not removed within {opts.learn_steps:,} steps",
        all(d["met"] for d in data),
        summary,
        [
            "unlabelled pairs N",
            "fine-tuned: first step <= 5% flagged",
            "fine-tuned: first step unflagged at keyed quality",
            "scratch: first step at keyed quality",
            "fine-tuned at the end: flagged · PSNR to keyed",
            "scratch at the end: PSNR to keyed",
            "met",
            "cost: images / steps / s",
        ],
        rows,
        data,
        [
            f"The attacker trains the released network (every weight) with the fusion loss under the zero code on N "
            f"unlabelled pairs of the train split, {opts.learn_steps:,} Adam steps (lr {opts.learn_lr:g}, batch "
            f"{opts.learn_batch}, {opts.learn_crop}-pixel crops), and the same architecture from scratch on the same "
            f"pairs and steps. Both are scored on the attacked pairs at steps {_eval_steps(opts.learn_steps)}; a step "
            f"is reported when the condition first holds at one of them. Scratch outputs carry no identifier: their "
            "first step at keyed quality is what the attacker pays without the released weights."
        ],
        time.perf_counter() - t0,
        [figure],
    )
