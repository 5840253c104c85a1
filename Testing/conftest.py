import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "AMIFFusion"))
HARVARD = ROOT.parent / "shared" / "data" / "harvard"


def load_tool(name: str):
    """A script of tools/ or research/tools/ imported as a module (they are not a package)."""
    import importlib.util

    path = ROOT / "tools" / f"{name}.py"
    path = path if path.exists() else ROOT / "research" / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need_harvard():
    """Skip with a reason outside CI when ../shared is absent; in CI its absence is a failure."""
    if HARVARD.exists():
        return HARVARD
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the Harvard data folder {HARVARD} is missing")
    pytest.skip(f"Harvard data not present at {HARVARD} (it sits beside the repo in CI)")


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    """A small untrained model package with its owner's key (fast, deterministic)."""
    import torch

    from amif.keys import generate_key, save_key
    from amif.network import AMIFNet, NetConfig
    from amif.package import load_package, save_package

    d = tmp_path_factory.mktemp("pkg")
    torch.manual_seed(0)
    net = AMIFNet(NetConfig(c1=4, c2=8, c3=8, mem_channels=4, mem_size=32, key_features=64, key_hidden=16))
    key = generate_key("test-model", "Test Lab", secret=bytes(range(32)))
    save_key(key, d / "owner.amifkey")
    save_package(
        d / "tiny", net, model_id="test-model", key_id=key.key_id, identifier="TEST · MARK", verify={"threshold": 0.12}
    )
    return load_package(d / "tiny"), d / "owner.amifkey", d
