"""The bundled demo model's behaviour on Harvard test pairs: keyed clean, no key / wrong keys marked."""

import numpy as np

from amif.inference import run_network
from amif.keys import load_key
from amif.package import bundled_key_path, bundled_model_path, load_package
from amif.verify import identifier_scores
from amif_research.data import list_pairs, load_pairs
from conftest import need_harvard


def test_keyed_clean_unkeyed_marked():
    root = need_harvard()
    pkg = load_package(bundled_model_path())
    pairs = list_pairs(root, "test")[::3]  # 24 pairs, all three modalities
    a8, b8 = load_pairs(pairs)
    a, b = a8 / np.float32(255), b8 / np.float32(255)
    code = load_key(bundled_key_path()).code()
    near = code.copy()
    near[:4] *= -1
    rnd = np.where(np.random.default_rng(5).random(256) > 0.5, 1.0, -1.0).astype(np.float32)

    def flagged(c):
        return identifier_scores(run_network(pkg, a, b, c), pkg.identifier) >= pkg.threshold

    assert flagged(code).mean() <= 1 / 24
    assert flagged(np.zeros(256, np.float32)).mean() >= 0.8
    assert flagged(near).mean() >= 0.8
    assert flagged(rnd).mean() >= 0.8
    assert (identifier_scores(a, pkg.identifier) >= pkg.threshold).mean() <= 1 / 24
