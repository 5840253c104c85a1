"""How far the owner's trace check puts images that carry a model's texture from images that do not.

    python research/tools/calibrate_trace.py -m MODEL.json -k OWNER.amifkey [--split test] [--limit 6]
        [--learn-steps 1000] [--learn-batch 8] [--students U-Net,CNN] [--synthetic S] [-o trace.json]

For a model trained with `amif train --trace-strength S`, on the pairs of a Harvard split, it prints the
trace scores (amif.trace.trace_score, threshold TRACE_THRESHOLD) of
* images that must stay below the threshold: other fusions of the same sources (mean, max rule,
  Laplacian pyramid), the unprotected twins in research/twins (or --twins), the model's own keyed outputs as they
  are and after JPEG 50, Gaussian blur (1 px) and noise (5/255), a student of the keyed outputs (a
  licensee distilling their own licensed outputs), and a student of the unkeyed outputs of the bundled
  model when that has no trace channel;
* images that should be above it: the model's unkeyed outputs with the identifier's strokes filled
  from the keyed output, the students of the unkeyed outputs that `amif attack` distils (U-Net, plain
  CNN), and those students after blur, JPEG and noise (an attacker cleaning up a student's output).
Students are trained exactly as `amif attack --attacks distillation` trains them (--learn-steps/--learn-batch as there).
With `--synthetic S`, for a model trained without a trace channel (the bundled one), the texture of its
key is added after the fact at strength S to its unkeyed outputs (as `amif train --trace-strength S`
adds it to the training target): a cheap test of a texture or a strength before training one in. The
students of the keyed outputs and of the bundled model are then left out (measured in model-history).
For each image that must stay below, it also prints the null spread (amif.trace.null_spread): the
trace score's standard deviation on that image measured with textures of other secrets, so the
threshold can be read in null standard deviations (pixels are not independent, so z's spread is
wider than 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research")]

from amif.errors import AMIFError  # noqa: E402
from amif.keys import load_key  # noqa: E402
from amif.package import bundled_model_path, load_package  # noqa: E402
from amif.trace import TRACE_THRESHOLD, null_spread, texture, trace_scale, trace_score, trace_weights  # noqa: E402
from amif_research.attack import AttackOptions, gaussian_blur, gaussian_noise, identifier_region, jpeg  # noqa: E402
from amif_research.attack_learned import STUDENTS, distil, run  # noqa: E402
from amif_research.attack_suite import load_target  # noqa: E402
from amif_research.baselines import BASELINES  # noqa: E402
from amif_research.data import default_data_dir  # noqa: E402

TWINS = ROOT / "research" / "twins"
CLEANUPS = {
    "blur 1 px": lambda x: gaussian_blur(x, 1.0),
    "JPEG 50": lambda x: jpeg(x, 50),
    "noise 5/255": lambda x: gaussian_noise(x, 5, 0),
}


def student(target, teacher: np.ndarray, cls, opts: AttackOptions) -> np.ndarray:
    """A student (as `amif attack` distils one) of `teacher`, the outputs on the attacker's pairs, run on the
    attacked pairs."""
    net, _ = distil(cls, *target.pool, teacher, opts)
    return run(net, target.a, target.b, opts.device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-k", "--key", required=True, help="the owner's key file")
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=6, help="pairs per pair type")
    p.add_argument("--learn-steps", type=int, default=AttackOptions.learn_steps, help="each student's Adam steps")
    p.add_argument("--learn-batch", type=int, default=AttackOptions.learn_batch)
    p.add_argument("--twins", type=Path, default=TWINS, help="folder of the unprotected twins' packages")
    p.add_argument("--students", default=",".join(STUDENTS), help="the students of the unkeyed outputs to train")
    p.add_argument(
        "--synthetic",
        type=float,
        default=0.0,
        metavar="S",
        help="a model without a trace channel: add its key's texture at strength S to its unkeyed outputs",
    )
    p.add_argument("-o", "--output", type=Path, help="write the scores as JSON too")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        opts = AttackOptions(learn_steps=args.learn_steps, learn_batch=args.learn_batch).check()
        target, _ = load_target(args.model, args.key, args.data, args.split, args.limit, pool=True)
        names = [name for name in args.students.split(",") if name]
        if not names or set(names) - set(STUDENTS):
            raise AMIFError(f"--students takes names from {', '.join(STUDENTS)} (got '{args.students}').")
        students = {name: STUDENTS[name] for name in names}
        add = None
        if args.synthetic:
            if target.trace is not None or not 0 < args.synthetic <= 0.25:
                raise AMIFError("--synthetic takes a strength in (0, 0.25] and a model without a trace channel.")
            target.trace = trace_weights(load_key(args.key).secret, target.package.model_id)
            scale = args.synthetic / trace_scale(*(torch.from_numpy(x[:64, None]) for x in target.pool), target.trace)

            def add(x, a, b):  # the unkeyed outputs as a model trained with this texture would give them
                ta, tb = (torch.from_numpy(np.ascontiguousarray(v[:, None])) for v in (a, b))
                return x + scale * texture(ta, tb, target.trace)[:, 0].numpy()

            target.unkeyed = add(target.unkeyed, target.a, target.b)
        elif target.trace is None:
            raise AMIFError(f"Model {args.model} has no trace channel (trained without --trace-strength).")
        twins = {f"twin {f.stem}": load_package(f) for f in sorted(args.twins.glob("*.json"))}
    except (AMIFError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a, b, keyed = target.a, target.b, target.keyed
    nulls = {name: np.stack([fn(x, y) for x, y in zip(a, b)]).clip(0, 1) for name, fn in BASELINES.items()}
    for name, twin in twins.items():
        nulls[name] = target.outputs(a, b, None, net=twin.net.eval())
    nulls["keyed"] = keyed
    nulls.update({f"keyed, {k}": fn(keyed) for k, fn in CLEANUPS.items()})
    bundled = load_package(bundled_model_path())
    if not args.synthetic:
        nulls["U-Net student of the keyed outputs"] = student(
            target, target.outputs(*target.pool, target.code), STUDENTS["U-Net"], opts
        )
    if not bundled.trace_strength and not args.synthetic:
        nulls["U-Net student of the bundled model's unkeyed outputs"] = student(
            target, target.outputs(*target.pool, None, net=bundled.net.eval()), STUDENTS["U-Net"], opts
        )
    region = identifier_region(target.identifier, *target.shape, 2)
    carry = {"unkeyed, strokes filled from the keyed output": np.where(region, keyed, target.unkeyed)}
    teacher = target.outputs(*target.pool, None)
    if add:
        teacher = add(teacher, *target.pool)
    for label, cls in students.items():
        out = student(target, teacher, cls, opts)
        carry[f"{label} student of the unkeyed outputs"] = out
        carry.update({f"{label} student, {k}": fn(out) for k, fn in CLEANUPS.items()})
    doc = {
        "model": str(args.model),
        "weights_sha256": target.package.manifest["weights_sha256"],
        "synthetic": args.synthetic,
        "split": args.split,
        "pairs": target.n,
        "threshold": TRACE_THRESHOLD,
        "groups": {},
        "null_spread": {},
    }
    for group, images in (("must stay below", nulls), ("should be above", carry)):
        print(
            f"--- {group} {TRACE_THRESHOLD:g}: min / median / max, share above"
            + (";  null spread s (amif.trace.null_spread): max s, max z / s" if images is nulls else "")
        )
        for name, img in images.items():
            z = trace_score(img, a, b, keyed, target.trace)
            doc["groups"].setdefault(group, {})[name] = z.tolist()
            line = f"{name:58s} {z.min():7.1f} {np.median(z):7.1f} {z.max():7.1f}  {np.mean(z > TRACE_THRESHOLD):5.0%}"
            if images is nulls and np.any(z):
                s = null_spread(img, a, b, keyed)
                doc["null_spread"][name] = s.tolist()
                line += f"  {s.max():6.1f} {np.max(z / s):6.2f}"
            print(line)
    spread = np.concatenate([np.asarray(s) for s in doc["null_spread"].values()])
    print(
        f"threshold {TRACE_THRESHOLD:g} = {TRACE_THRESHOLD / spread.max():.1f} null spreads on the widest of "
        f"{spread.size} null slices (median spread {np.median(spread):.1f})"
    )
    print(f"{target.n} pairs, {time.time() - t0:.0f} s")
    if args.output:
        args.output.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
