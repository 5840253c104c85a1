"""Is a key embedding near the key's enough for a clean output? Three probes (model-history).

    python research/tools/probe_key_embedding.py -m PACKAGE [-m ...] -k OWNER.amifkey [--data DIR] [--codes 8]

(The forged probe takes most of the time: with --codes 4, about 5 minutes per model on one core.)

For random +-1 codes on the first two pairs that `amif attack` forges on, it prints the share of outputs
flagged by `verify` and the cosine of their key embedding (sin of KeyEmbedding.phases) to the key's:
* arc t: every angle moved the share t of the shorter arc from the code's to the key's (the path that
  `amif train --partial-keys` samples);
* matched s: the code itself moved by s Adam steps (lr 0.05, as the forger's) that raise that cosine; only
  the key's holder can run this. The fusion-loss forger's successes end near cosine 0.8 to the key's;
* forged s: the code of lowest fusion loss met in s Adam steps on that loss (the attack's forger, lr 0.05).
For each probe it also prints the fusion loss of the outputs (the forger's objective: along the arc, whether it
falls towards the key) and how far the codes are from the key at each stage of KeyEmbedding, as
||x - x_key|| / ||x_key||: the embedding (sin of the angles), the MLP's hidden layer (before its
activation) and the FiLM parameters the decoder reads. Where a forged code is near the key's at a stage
but far before it, that stage is where the network lets it through.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research")]

ARCS = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
MATCH_STEPS = (10, 20, 40)
FORGE_STEPS = (150,)


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


def stages(net, phases):
    """KeyEmbedding's stages for the angles `phases` (n, F): the embedding, the MLP's hidden layer before its
    activation, and the FiLM parameters (all stages' concatenated)."""
    import torch

    e = torch.sin(phases)
    h = net.key.mlp[0](e)
    return e, h, net.key.mlp[1:](h)


def stage_distances(net, key_phases, phases) -> list[float]:
    """Mean over codes of ||x - x_key|| / ||x_key|| at each of `stages`."""
    import torch

    with torch.no_grad():
        pairs = zip(stages(net, phases), stages(net, key_phases.unsqueeze(0)))
        return [float(((x - k).norm(dim=1) / k.norm(dim=1)).mean()) for x, k in pairs]


def forged_codes(net, enc, a, b, codes, steps: int, lr: float = 0.05):
    """For each of `codes` (n, 256), the code of lowest fusion loss on (a, b) met in `steps` Adam steps on that
    loss, one code at a time, as `amif attack`'s forger descends. The best, not the last: the descent can pass
    through the key's clean region and out again, and an attacker keeps the code that fused best."""
    import torch

    from amif_research.losses import fusion_loss

    out = []
    for start in codes:
        code = start.clone().requires_grad_()
        adam = torch.optim.Adam([code], lr=lr)
        best, best_loss = start.clone(), float("inf")
        for _ in range(steps + 1):
            loss = fusion_loss(net.decode(enc, code.unsqueeze(0).expand(len(a), -1)), a, b)[0]
            if (value := loss.item()) < best_loss:
                best, best_loss = code.detach().clone(), value
            adam.zero_grad()
            loss.backward()
            adam.step()
        out.append(best)
    return torch.stack(out)


def probe(model, key, data=None, n: int = 8, seed: int = 0) -> list[tuple]:
    """(label, mean cosine to the key's embedding, share of outputs flagged, the outputs' fusion loss (what the
    forger descends), *stage_distances) for each probe."""
    import torch

    from amif.verify import score_tensor
    from amif_research.attack import _forge_images, _frozen_copy
    from amif_research.attack_suite import load_target
    from amif_research.losses import fusion_loss
    from amif_research.train import arc_phases

    target, _ = load_target(model, key, data, "test", 1)
    sub = target.subset(_forge_images(target, 2))
    net = _frozen_copy(target.package.net, "cpu")
    m = len(sub.a)
    a, b, mask = sub.tensor(sub.a), sub.tensor(sub.b), sub.mask()
    key_code = torch.from_numpy(target.code).float()
    gen = torch.Generator().manual_seed(seed)
    codes = (torch.randint(0, 2, (n, key_code.numel()), generator=gen) * 2 - 1).float()
    with torch.no_grad():
        enc = net.encode(a, b)  # decode repeats it for each code
        key_phases, start = net.key.phases(key_code), net.key.phases(codes)

    def measure(label, c, phases=None):
        with torch.no_grad():
            ph = net.key.phases(c) if phases is None else phases
            cos = net.key.cosine(ph, key_phases).mean()
            y = net.decode(enc, c.repeat_interleave(m, 0), None if phases is None else ph.repeat_interleave(m, 0))
            flagged = (score_tensor(y, mask) >= target.threshold).float().mean()
            loss = fusion_loss(y, a.repeat(n, 1, 1, 1), b.repeat(n, 1, 1, 1))[0]
            return (label, float(cos), float(flagged), float(loss), *stage_distances(net, key_phases, ph))

    rows = [measure(f"arc t {t:g}", codes, arc_phases(key_phases, start, t)) for t in ARCS]
    rows += [measure(f"matched {s} steps", matched_codes(net, key_code, codes, s)) for s in MATCH_STEPS]
    rows += [measure("random", codes)]
    rows += [measure(f"forged {s} steps", forged_codes(net, enc, a, b, codes, s)) for s in FORGE_STEPS]
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
        print(
            f"{Path(model).name}: cosine to the key's embedding, share flagged, fusion loss, distance to the "
            "key's embedding / hidden / FiLM"
        )
        for label, cos, flagged, loss, *dist in probe(model, args.key, args.data, args.codes, args.seed):
            print(f"  {label:<20} {cos:6.3f} {flagged:6.0%} {loss:7.4f} " + " ".join(f"{x:6.3f}" for x in dist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
