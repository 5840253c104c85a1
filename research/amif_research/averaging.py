"""Weight averaging of checkpoints of one training run (`amif average`)."""

from __future__ import annotations

from pathlib import Path

from amif.errors import AMIFError
from amif.files import refuse_input_as_output
from amif.package import load_package, package_paths, save_package


def average_packages(paths, out) -> Path:
    """Write the mean of the weights of several packages of one model (checkpoints of one training run:
    same model, key, identifier, verification and architecture) to `out`; returns its manifest path.

    A weight average of nearby checkpoints is steadier than any one of them (with constant learning
    rates single checkpoints swing). Parameters are averaged; the fixed buffers (the key's random
    projection) must already be equal. The manifest keeps the training record of the latest
    checkpoint and lists each source's steps and weights hash under training.averaged. Anything that
    does not match is an AMIFError and nothing is written; so is an `out` that is one of the packages
    (after symlinks and `..`), before anything is read."""
    import torch

    if len(paths) < 2:
        raise AMIFError("Averaging needs at least two model packages.")
    for o in package_paths(out):
        refuse_input_as_output(o, [f for p in paths for f in package_paths(p)])
    pkgs = [load_package(p) for p in paths]
    first = pkgs[0]
    hashes = [p.manifest["weights_sha256"] for p in pkgs]
    if len(set(hashes)) < len(hashes):
        twice = next(p for p in pkgs if hashes.count(p.manifest["weights_sha256"]) > 1)
        raise AMIFError(f"The weights of {twice.path.name} are given twice: each checkpoint can count once.")
    same = ("model_id", "key_id", "identifier", "twin", "verify", "architecture")
    for p in pkgs[1:]:
        for k in same:
            if p.manifest.get(k) != first.manifest.get(k):
                raise AMIFError(
                    f"{p.path.name} and {first.path.name} differ in '{k}': "
                    "only checkpoints of one model can be averaged."
                )
    params = {n for n, _ in first.net.named_parameters()}
    states = [p.net.state_dict() for p in pkgs]
    state = {}
    for name, t in states[0].items():
        ts = [sd[name] for sd in states]
        if name in params:
            state[name] = torch.stack(ts).mean(0)
        elif any(not torch.equal(t, u) for u in ts[1:]):
            raise AMIFError(
                f"{first.path.name} and the others differ in the fixed tensor '{name}': "
                "they are not checkpoints of one model."
            )
        else:
            state[name] = t
    net = first.net
    net.load_state_dict(state)
    latest = max(pkgs, key=lambda p: p.manifest.get("training", {}).get("steps", 0))
    m = first.manifest
    training = {
        **latest.manifest.get("training", {}),
        "averaged": [
            {"steps": p.manifest.get("training", {}).get("steps"), "weights_sha256": p.manifest["weights_sha256"]}
            for p in pkgs
        ],
    }
    extra = {k: m[k] for k in ("verify", "twin") if k in m}
    return save_package(
        out, net, model_id=m["model_id"], key_id=m["key_id"], identifier=m["identifier"], training=training, **extra
    )
