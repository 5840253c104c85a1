"""Is a key embedding near the key's enough for a clean output? Two probes, seconds each (model-history).

    python tools/probe_key_embedding.py -m PACKAGE [-m ...] -k OWNER.amifkey [--data DIR] [--codes 8]

For random +-1 codes on the first two pairs that `amif attack` forges on, it prints the share of outputs
flagged by `verify` and the cosine of their key embedding (sin of KeyEmbedding.phases) to the key's:
* arc t: every angle moved the share t of the shorter arc from the code's to the key's (the path that
  `amif train --partial-keys` samples);
* matched s: the code itself moved by s Adam steps (lr 0.05, as the forger's) that raise that cosine; only
  the key's holder can run this. The fusion-loss forger's successes end near cosine 0.8 to the key's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "AMIFFusion"))

ARCS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
MATCH_STEPS = (10, 20, 40)


def matched_codes(net, key_code, codes, steps: int, lr: float = 0.05):
    """`codes` (n, 256) after `steps` Adam steps that raise their key embedding's cosine to the key's."""
    import torch

    key_phases = net.key.phases(key_code).detach()
    code = codes.clone().requires_grad_()
    adam = torch.optim.Adam([code], lr=lr)
    for _ in range(steps):
        cos = net.key.cosine(net.key.phases(code), key_phases)
        adam.zero_grad()
        (-cos.sum()).backward()
        adam.step()
    return code.detach()


def probe(model, key, data=None, n: int = 8, seed: int = 0) -> list[tuple[str, float, float]]:
    """(label, mean cosine to the key's embedding, share of outputs flagged) for each probe."""
    import torch

    from amif.attack import _forge_images, _frozen_copy, load_target
    from amif.train import arc_phases
    from amif.verify import score_tensor

    target, _ = load_target(model, key, data, "test", 1)
    sub = target.subset(_forge_images(target, 2))
    net = _frozen_copy(target.package.net, "cpu")
    m = len(sub.a)
    a, b, mask = sub.tensor(sub.a), sub.tensor(sub.b), sub.mask()
    key_code = torch.from_numpy(target.code).float()
    gen = torch.Generator().manual_seed(seed)
    codes = (torch.randint(0, 2, (n, key_code.numel()), generator=gen) * 2 - 1).float()
    with torch.no_grad():
        enc = net.encode(a.repeat(n, 1, 1, 1), b.repeat(n, 1, 1, 1))
        key_phases, start = net.key.phases(key_code), net.key.phases(codes)

    def measure(label, c, phases=None):
        with torch.no_grad():
            ph = net.key.phases(c) if phases is None else phases
            cos = net.key.cosine(ph, key_phases).mean()
            y = net.decode(enc, c.repeat_interleave(m, 0), None if phases is None else ph.repeat_interleave(m, 0))
            flagged = (score_tensor(y, mask) >= target.threshold).float().mean()
        return label, float(cos), float(flagged)

    rows = [measure(f"arc t {t:g}", codes, arc_phases(key_phases, start, t)) for t in ARCS]
    rows += [measure(f"matched {s} steps", matched_codes(net, key_code, codes, s)) for s in MATCH_STEPS]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", action="append", required=True, help="model package (repeat for several)")
    p.add_argument("-k", "--key", required=True, help="the owner's key file")
    p.add_argument("--data", help="folder of pairs (default: amif's data folder)")
    p.add_argument("--codes", type=int, default=8, help="random codes per probe (default 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for model in args.model:
        print(f"{Path(model).name}: cosine to the key's embedding, share flagged")
        for label, cos, flagged in probe(model, args.key, args.data, args.codes, args.seed):
            print(f"  {label:<20} {cos:6.3f} {flagged:6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
