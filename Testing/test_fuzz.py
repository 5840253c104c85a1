"""Bad input, end to end: damaged key files, model manifests and safetensors weights, bad arrays,
images and volumes. Every case must give ONE clear `AMIFError` (never a raw KeyError, TypeError,
JSONDecodeError, RuntimeError... with a traceback) and write nothing: `amif fuse` exits 2 with a
single `amif: error: ...` line and no output file; `AMIFFusionLib.logic.fuse` leaves the MRML
scene as it was. All cases use the tiny model and small arrays (fast)."""

import base64
import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core: a missing wheel must fail loudly, not skip
import vtk
from PIL import Image
from safetensors.torch import load_file, save_file

from amif.cli import main
from amif.errors import AMIFError
from amif.fusion import fuse_images, fuse_volumes
from amif.keys import generate_key, load_key, save_key
from amif.package import load_package, package_paths, save_package
from AMIFFusionLib import logic

RNG = np.random.default_rng(0)


def _ids(cases):
    return [c[0] for c in cases]


def _copy_package(src_dir: Path, dst_dir: Path) -> Path:
    for f in src_dir.glob("tiny.*"):
        (dst_dir / f.name).write_bytes(f.read_bytes())
    return dst_dir / "tiny"


def _rehash(stem: Path) -> None:
    """Make the manifest's weights hash match the weights file (so later checks are reached)."""
    manifest, weights = package_paths(stem)
    m = json.loads(manifest.read_text())
    m["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(m))


def _cli_error(args, out: Path, match: str, capsys) -> str:
    """`amif ARGS` fails cleanly: exit 2, one `amif: error:` line holding `match`, no output."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amif: error: "), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists() or (out.is_dir() and not any(out.iterdir()))
    return lines[0]


# ---------------------------------------------------------------- inputs shared by the CLI cases


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    Image.fromarray((RNG.random((48, 40)) * 255).astype(np.uint8)).save(d / "a.png")
    Image.fromarray((RNG.random((48, 40, 3)) * 255).astype(np.uint8)).save(d / "b.png")
    vol = sitk.GetImageFromArray(RNG.random((4, 32, 32)).astype(np.float32))
    vol.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(vol, str(d / "a.nrrd"))
    sitk.WriteImage(vol, str(d / "b.nrrd"))
    return d


# ---------------------------------------------------------------- key files


def _key_dict():
    return json.loads(generate_key("test-model", "Lab", secret=bytes(range(32))).to_json())


def _key_edit(**changes):
    return lambda d: json.dumps({**d, **changes})


def _key_drop(field):
    return lambda d: json.dumps({k: v for k, v in d.items() if k != field})


KEY_CASES = [
    # (id, content from the valid key's dict (str or bytes; None: the path is a folder), message)
    ("empty file", lambda d: "", "not valid JSON"),
    ("only spaces", lambda d: "   \n", "not valid JSON"),
    ("truncated", lambda d: json.dumps(d)[:40], "not valid JSON"),
    ("non-UTF-8 bytes", lambda d: b"\xff\xfe\x00\x81garbage", "cannot be read: UnicodeDecodeError"),
    ("UTF-8 BOM", lambda d: b"\xef\xbb\xbf" + json.dumps(d).encode(), "not valid JSON"),
    ("binary noise", lambda d: bytes(range(256)) * 4, "cannot be read"),
    ("deeply nested JSON", lambda d: "[" * 2000 + "]" * 2000, "not valid JSON"),
    ("5000-digit integer", lambda d: '{"format": "amif-key", "version": ' + "9" * 5000 + "}", "too large"),
    ("4000-digit integer", lambda d: '{"format": "amif-key", "version": ' + "9" * 4000 + "}", "has version 9999"),
    ("JSON list", lambda d: json.dumps([d]), "not an AMIF key file"),
    ("JSON string", lambda d: json.dumps("amif-key"), "not an AMIF key file"),
    ("JSON null", lambda d: "null", "not an AMIF key file"),
    ("no format", _key_drop("format"), "not an AMIF key file"),
    ("format of a model manifest", _key_edit(format="amif-model"), "not an AMIF key file"),
    ("version as text", _key_edit(version="1"), "has version '1'"),
    ("version NaN", lambda d: json.dumps({**d, "version": float("nan")}), "has version nan"),
    ("version 1e999", lambda d: json.dumps(d).replace('"version": 1', '"version": 1e999'), "has version inf"),
    ("no version", _key_drop("version"), "has version None"),
    *[
        (f"no {f}", _key_drop(f), f"lacks the text field '{f}'")
        for f in ("model_id", "key_id", "licensee", "created", "secret")
    ],
    ("model id a number", _key_edit(model_id=7), "lacks the text field 'model_id'"),
    ("licensee null", _key_edit(licensee=None), "lacks the text field 'licensee'"),
    ("secret a list", lambda d: json.dumps({**d, "secret": list(range(32))}), "lacks the text field 'secret'"),
    ("secret an object", _key_edit(secret={"b64": "x"}), "lacks the text field 'secret'"),
    (
        "model id a lone surrogate",
        lambda d: json.dumps(d).replace('"test-model"', '"\\ud800"'),
        "the field 'model_id' is not valid text",
    ),
    (
        "licensee a lone surrogate",
        lambda d: json.dumps(d).replace('"Lab"', '"L\\udfffb"'),
        "the field 'licensee' is not valid text",
    ),
    ("secret not base64", _key_edit(secret="!!not base64!!"), "not valid base64"),
    (
        "secret with a newline",
        lambda d: json.dumps({**d, "secret": d["secret"][:20] + "\n" + d["secret"][20:]}),
        "not valid base64",
    ),
    ("secret non-ASCII", _key_edit(secret="é" * 44), "not valid base64"),
    ("secret empty", _key_edit(secret=""), "must be 32 bytes, found 0"),
    ("secret 31 bytes", _key_edit(secret=base64.b64encode(bytes(31)).decode()), "must be 32 bytes, found 31"),
    ("secret 33 bytes", _key_edit(secret=base64.b64encode(bytes(33)).decode()), "must be 32 bytes, found 33"),
    ("secret 1 MB", _key_edit(secret=base64.b64encode(bytes(1 << 20)).decode()), "too large: over 4096 bytes"),
    ("key id does not match", _key_edit(key_id="0000-0000-0000-0000"), "damaged"),
    ("model id changed", _key_edit(model_id="test-model-2"), "damaged"),
    ("a folder", None, "is not a regular file (a folder)"),
]


def _write_key(tmp_path, make) -> Path:
    path = tmp_path / "bad.amifkey"
    if make is None:
        path.mkdir()
        return path
    content = make(_key_dict())
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("case", KEY_CASES, ids=_ids(KEY_CASES))
def test_bad_key_file(tiny_package, files, tmp_path, capsys, case):
    _, make, message = case
    key = _write_key(tmp_path, make)
    with pytest.raises(AMIFError, match="bad.amifkey") as e:
        load_key(key)
    assert message in str(e.value)
    out = tmp_path / "f.png"
    cli = ["fuse", str(files / "a.png"), str(files / "b.png"), "-o", str(out), "-k", str(key)]
    _cli_error([*cli, "-m", str(tiny_package[2] / "tiny")], out, message, capsys)


@pytest.mark.parametrize(
    "case",
    [("missing", "does not exist"), ("foreign model", "is for model 'someone-else'")],
    ids=["missing", "foreign model"],
)
def test_key_file_missing_or_foreign(tiny_package, files, tmp_path, capsys, case):
    kind, message = case
    key = tmp_path / "k.amifkey"
    if kind == "foreign model":
        save_key(generate_key("someone-else", "Lab"), key)
    out = tmp_path / "f.nrrd"
    cli = ["fuse", str(files / "a.nrrd"), str(files / "b.nrrd"), "-o", str(out), "-k", str(key), "-q"]
    _cli_error([*cli, "-m", str(tiny_package[2] / "tiny")], out, message, capsys)


# ---------------------------------------------------------------- model manifests


def _m_edit(**changes):
    return lambda m: json.dumps({**m, **changes})


def _m_drop(field):
    return lambda m: json.dumps({k: v for k, v in m.items() if k != field})


def _arch(**changes):
    return lambda m: json.dumps({**m, "architecture": {**m["architecture"], **changes}})


MANIFEST_CASES = [
    # (id, new manifest text or bytes from the valid manifest dict, message)
    ("empty file", lambda m: "", "not readable JSON (JSONDecodeError)"),
    ("truncated", lambda m: json.dumps(m)[:100], "not readable JSON (JSONDecodeError)"),
    (
        "non-UTF-8 bytes",
        lambda m: json.dumps(m).encode("utf-8").replace(b"TEST", b"\xff\xfeST"),
        "not readable JSON (UnicodeDecodeError)",
    ),
    ("deeply nested JSON", lambda m: "[" * 100_000 + "]" * 100_000, "not readable JSON (RecursionError)"),
    (
        "5000-digit integer",
        lambda m: json.dumps(m).replace('"format_version": 1', '"format_version": ' + "9" * 5000),
        "not readable JSON (ValueError)",
    ),
    ("JSON list", lambda m: json.dumps([m]), "not an AMIF model manifest"),
    ("format of a key file", _m_edit(format="amif-key"), "not an AMIF model manifest"),
    ("no format version", _m_drop("format_version"), "format version None"),
    ("format version as text", _m_edit(format_version="1"), "format version '1'"),
    ("format version 2", _m_edit(format_version=2), "format version 2"),
    *[
        (f"no {f}", _m_drop(f), f"lacks the text field '{f}'")
        for f in ("model_id", "key_id", "identifier", "weights", "weights_sha256")
    ],
    ("hash a number", _m_edit(weights_sha256=12345), "lacks the text field 'weights_sha256'"),
    ("model id a list", _m_edit(model_id=["test-model"]), "lacks the text field 'model_id'"),
    ("no architecture", _m_drop("architecture"), "lacks its architecture"),
    ("architecture a list", _m_edit(architecture=[1, 2]), "lacks its architecture"),
    ("architecture of another name", _arch(name="ResNet"), "Unknown architecture 'ResNet'"),
    ("architecture without name", lambda m: json.dumps({**m, "architecture": {"c1": 4}}), "Unknown architecture None"),
    ("channels as text", _arch(c1="4"), "field 'c1' must be a positive integer, not '4'"),
    ("channels null", _arch(c1=None), "field 'c1' must be a positive integer, not None"),
    ("channels float", _arch(c1=4.0), "field 'c1' must be a positive integer, not 4.0"),
    ("channels boolean", _arch(mem_slots=True), "field 'mem_slots' must be a positive integer, not True"),
    ("channels negative", _arch(c1=-4), "field 'c1' must be a positive integer, not -4"),
    ("channels zero", _arch(c2=0), "field 'c2' must be a positive integer, not 0"),
    ("channels a list", _arch(c3=[8] * 100), "field 'c3' must be a positive integer, not [8, 8, 8"),
    (
        "key scale NaN",
        lambda m: json.dumps({**m, "architecture": {**m["architecture"], "key_omega": float("nan")}}),
        "field 'key_omega' must be a finite number, not nan",
    ),
    ("key scale as text", _arch(key_omega="1"), "field 'key_omega' must be a finite number"),
    ("channels 10^15", _arch(c1=10**15), "do not fit the architecture"),
    ("memory grid 10^6 square", _arch(mem_size=10**6), "tensor 'memory.spatial'"),
    ("memory grid 10^12 square", _arch(mem_size=10**12), "do not fit the architecture"),
    ("key of 128 bits", _arch(key_bits=128), "tensor 'key.proj'"),
    ("verify not an object", _m_edit(verify=0.12), "finite number 'threshold'"),
    ("threshold as text", _m_edit(verify={"threshold": "0.12"}), "finite number 'threshold'"),
    ("threshold NaN", lambda m: json.dumps({**m, "verify": {"threshold": float("nan")}}), "finite number 'threshold'"),
    (
        "threshold Infinity",
        lambda m: json.dumps({**m, "verify": {"threshold": float("inf")}}),
        "finite number 'threshold'",
    ),
    ("threshold boolean", _m_edit(verify={"threshold": True}), "finite number 'threshold'"),
    ("identifier empty", _m_edit(identifier=""), "identifier text is empty"),
    ("identifier without glyphs", _m_edit(identifier="ÄRZTE 中"), "characters without a glyph"),
    ("weights outside its folder", _m_edit(weights="../tiny.safetensors"), "outside its folder"),
    ("weights an absolute path", _m_edit(weights="/etc/passwd"), "outside its folder"),
    ("weights the parent folder", _m_edit(weights=".."), "is missing"),
    ("weights empty name", _m_edit(weights=""), "outside its folder"),
    ("weights file missing", _m_edit(weights="gone.safetensors"), "is missing"),
    ("hash does not match", _m_edit(weights_sha256="0" * 64), "does not match the hash"),
    ("hash of other weights", _m_edit(weights_sha256=hashlib.sha256(b"other").hexdigest()), "does not match the hash"),
]


def _refused(stem, manifest, files, tmp_path, capsys, message) -> str:
    """The package fails to load with `message`, and `amif fuse` with it fails the same way, writing nothing."""
    with pytest.raises(AMIFError) as e:
        load_package(stem)
    assert message in str(e.value)
    out = tmp_path / "f.png"
    cli = ["fuse", str(files / "a.png"), str(files / "b.png"), "-o", str(out), "-m", str(manifest)]
    _cli_error(cli, out, message, capsys)
    return str(e.value)


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=_ids(MANIFEST_CASES))
def test_bad_manifest(tiny_package, files, tmp_path, capsys, case):
    _, make, message = case
    stem = _copy_package(tiny_package[2], tmp_path)
    manifest, _ = package_paths(stem)
    content = make(json.loads(manifest.read_text(encoding="utf-8")))
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    _refused(stem, manifest, files, tmp_path, capsys, message)


def test_manifest_missing_and_unprotected_twin(tiny_package, files, tmp_path, capsys):
    out = tmp_path / "f.png"
    cli = ["fuse", str(files / "a.png"), str(files / "b.png"), "-o", str(out), "-m"]
    _cli_error([*cli, str(tmp_path / "none.json")], out, "manifest none.json does not exist", capsys)
    stem = _copy_package(tiny_package[2], tmp_path)
    manifest, _ = package_paths(stem)
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "twin": True, "identifier": "", "key_id": ""}))
    _cli_error([*cli, str(stem)], out, "unprotected twin", capsys)


def test_key_bits_other_than_256(tmp_path, files, capsys):
    """A self-consistent package whose network takes 128-value codes: AMIF keys give 256."""
    import torch

    from amif.network import AMIFNet, NetConfig

    torch.manual_seed(0)
    net = AMIFNet(NetConfig(c1=4, c2=8, c3=8, mem_channels=4, mem_size=16, key_bits=128, key_features=32, key_hidden=8))
    key = generate_key("short-model", "Lab")
    save_key(key, tmp_path / "k.amifkey")
    save_package(tmp_path / "short", net, model_id="short-model", key_id=key.key_id, identifier="SHORT")
    with pytest.raises(AMIFError, match="takes 128-value codes; AMIF keys give 256"):
        load_package(tmp_path / "short")
    out = tmp_path / "f.png"
    cli = ["fuse", str(files / "a.png"), str(files / "b.png"), "-o", str(out), "-m", str(tmp_path / "short"), "-k"]
    _cli_error([*cli, str(tmp_path / "k.amifkey")], out, "128-value codes", capsys)


# ---------------------------------------------------------------- safetensors weights (hash made to match)


def _header(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _with_header(data: bytes, edit) -> bytes:
    header, body = _header(data)
    edit(header, sorted(k for k in header if k != "__metadata__"))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _set(field, value, key_index=0):
    def edit(h, keys):
        h[keys[key_index]][field] = value(h[keys[key_index]]) if callable(value) else value

    return edit


def _past_the_end(tensor):
    return [0, 2 * tensor["data_offsets"][1]]


def _overlap(h, keys):
    h[keys[1]]["data_offsets"] = h[keys[0]]["data_offsets"]


def _metadata_number(h, keys):
    h["__metadata__"] = {"model_id": 1}


SAFETENSORS_BYTES = [
    # (id, new weights bytes from the valid ones) -> "not a valid safetensors file"
    ("empty file", lambda w: b""),
    ("4 bytes", lambda w: w[:4]),
    ("header only", lambda w: w[: 8 + struct.unpack("<Q", w[:8])[0]]),
    ("truncated by half", lambda w: w[: len(w) // 2]),
    ("one byte short", lambda w: w[:-1]),
    ("one byte too many", lambda w: w + b"\0"),
    ("header length 2^63", lambda w: struct.pack("<Q", 2**63) + w[8:]),
    ("header length beyond the file", lambda w: struct.pack("<Q", len(w)) + w[8:]),
    ("header not UTF-8", lambda w: struct.pack("<Q", 8) + b"\xff" * 8 + w[8:]),
    ("header not JSON", lambda w: struct.pack("<Q", 8) + b"{{{{{{{{" + w[8:]),
    ("header a JSON list", lambda w: struct.pack("<Q", 8) + b"[]      "),
    ("pickle bytes", lambda w: b"\x80\x04\x95" + bytes(64)),
    ("zip bytes", lambda w: b"PK\x03\x04" + bytes(64)),
    ("offsets beyond the data", lambda w: _with_header(w, _set("data_offsets", _past_the_end))),
    ("offsets negative", lambda w: _with_header(w, _set("data_offsets", [-1, 16]))),
    ("offsets overlap", lambda w: _with_header(w, _overlap)),
    ("shape lies", lambda w: _with_header(w, _set("shape", lambda t: [t["shape"][0] * 2, *t["shape"][1:]]))),
    ("shape 2^62 x 2^62", lambda w: _with_header(w, _set("shape", [2**62, 2**62]))),
    ("shape negative", lambda w: _with_header(w, _set("shape", [-4]))),
    ("unknown dtype", lambda w: _with_header(w, _set("dtype", "Q99"))),
    ("dtype lies about size", lambda w: _with_header(w, _set("dtype", "F64"))),
    ("metadata not text", lambda w: _with_header(w, _metadata_number)),
]


@pytest.mark.parametrize("case", SAFETENSORS_BYTES, ids=_ids(SAFETENSORS_BYTES))
def test_bad_safetensors_bytes(tiny_package, files, tmp_path, capsys, case):
    _, make = case
    stem = _copy_package(tiny_package[2], tmp_path)
    manifest, weights = package_paths(stem)
    weights.write_bytes(make(weights.read_bytes()))
    _rehash(stem)
    with pytest.raises(AMIFError, match="is not a valid safetensors file"):
        load_package(stem)
    out = tmp_path / "f.nrrd"
    cli = ["fuse", str(files / "a.nrrd"), str(files / "b.nrrd"), "-o", str(out), "-m", str(manifest), "-q"]
    _cli_error(cli, out, "is not a valid safetensors file", capsys)


def _drop_first(s):
    s.pop(sorted(s)[0])


def _extra(s):
    s["extra.weight"] = s[sorted(s)[0]].clone()


def _reshape(s):
    k = "encoder.e1.weight"
    s[k] = s[k].reshape(s[k].shape[0], -1)


def _widen(s):
    import torch

    s["encoder.e1.bias"] = torch.cat([s["encoder.e1.bias"], s["encoder.e1.bias"]])


def _empty(s):
    import torch

    s["encoder.e1.bias"] = torch.zeros(0)


def _dtype(name):
    def edit(s):
        import torch

        s["encoder.e1.weight"] = s["encoder.e1.weight"].to(getattr(torch, name))

    return edit


def _poison(value):
    def edit(s):
        s["decoder.head.weight"] = s["decoder.head.weight"].clone()
        s["decoder.head.weight"].view(-1)[3] = value

    return edit


SAFETENSORS_TENSORS = [
    # (id, edit of the loaded state dict, message) - valid safetensors files that do not fit the model
    ("tensor missing", _drop_first, "is missing"),
    ("extra tensor", _extra, "tensor 'extra.weight' is unexpected"),
    ("tensor of wrong rank", _reshape, "tensor 'encoder.e1.weight' is torch.float32 (4, 36)"),
    ("tensor too long", _widen, "tensor 'encoder.e1.bias' is torch.float32 (8,)"),
    ("tensor empty", _empty, "tensor 'encoder.e1.bias' is torch.float32 (0,)"),
    ("integer tensor", _dtype("int32"), "tensor 'encoder.e1.weight' is torch.int32"),
    ("float64 tensor", _dtype("float64"), "the architecture needs torch.float32"),
    ("float16 tensor", _dtype("float16"), "the architecture needs torch.float32"),
    ("bool tensor", _dtype("bool"), "tensor 'encoder.e1.weight' is torch.bool"),
    ("NaN weight", _poison(float("nan")), "contain NaN or Inf"),
    ("Inf weight", _poison(float("inf")), "contain NaN or Inf"),
    ("-Inf weight", _poison(float("-inf")), "contain NaN or Inf"),
]


@pytest.mark.parametrize("case", SAFETENSORS_TENSORS, ids=_ids(SAFETENSORS_TENSORS))
def test_weights_that_do_not_fit(tiny_package, files, tmp_path, capsys, case):
    _, edit, message = case
    stem = _copy_package(tiny_package[2], tmp_path)
    manifest, weights = package_paths(stem)
    state = load_file(str(weights))
    edit(state)
    save_file(state, str(weights))
    _rehash(stem)
    assert "tiny.safetensors" in _refused(stem, manifest, files, tmp_path, capsys, message)


def test_tampered_weights_one_bit(tiny_package, files, tmp_path, capsys):
    stem = _copy_package(tiny_package[2], tmp_path)
    manifest, weights = package_paths(stem)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    out = tmp_path / "f.nrrd"
    cli = ["fuse", str(files / "a.nrrd"), str(files / "b.nrrd"), "-o", str(out), "-m", str(manifest), "-q"]
    _cli_error(cli, out, "does not match the hash in its manifest", capsys)


# ---------------------------------------------------------------- 2D arrays (engine API)


def _grey(h=32, w=32):
    return RNG.random((h, w)).astype(np.float32)


def _with(value, dtype=np.float32):
    a = _grey().astype(dtype)
    a[5, 7] = value
    return a


ARRAY_CASES = [
    # (id, image A, image B, message)
    ("NaN in A", _with(np.nan), _grey(), "Image A contains NaN or infinite values"),
    ("+Inf in B", _grey(), _with(np.inf), "Image B contains NaN or infinite values"),
    ("-Inf in A", _with(-np.inf), _grey(), "Image A contains NaN or infinite values"),
    ("NaN in colour B", _grey(), np.full((32, 32, 3), np.nan, np.float32), "Image B contains NaN"),
    ("empty 0x0", np.zeros((0, 0)), np.zeros((0, 0)), "Image A is empty"),
    ("empty 0x32", np.zeros((0, 32)), np.zeros((0, 32)), "Image A is empty"),
    ("empty B", _grey(), np.zeros((32, 0)), "Image B is empty"),
    ("empty list", [], [], "Image A is empty"),
    ("0-d", np.float32(0.5), _grey(), "needs 2D images; got shapes ()"),
    ("1-d", RNG.random(64), RNG.random(64), "needs 2D images; got shapes (64,)"),
    ("3-d stack as A", RNG.random((4, 32, 32)), _grey(), "needs 2D images; got shapes (4, 32, 32)"),
    ("two channels in B", _grey(), RNG.random((32, 32, 2)), "needs 2D images"),
    ("five channels in B", _grey(), RNG.random((32, 32, 5)), "needs 2D images"),
    ("4-d B", _grey(), RNG.random((1, 32, 32, 3)), "needs 2D images"),
    ("sizes differ", _grey(32, 32), _grey(32, 33), "differ in size (32x32 vs 33x32)"),
    ("transposed", _grey(32, 40), _grey(40, 32), "differ in size"),
    ("1x1 pixel", _grey(1, 1), _grey(1, 1), "fusion needs at least 16x16"),
    ("8x8 pixels", _grey(8, 8), _grey(8, 8), "fusion needs at least 16x16"),
    ("one row", _grey(1, 64), _grey(1, 64), "fusion needs at least 16x16"),
    ("one column", _grey(64, 1), _grey(64, 1), "fusion needs at least 16x16"),
    ("text pixels", np.full((32, 32), "a"), _grey(), "has data type <U1"),
    ("object pixels", np.full((32, 32), None), _grey(), "has data type object"),
    ("complex pixels", _grey() + 1j, _grey(), "has data type complex64"),
    ("datetime pixels", np.zeros((32, 32), "datetime64[s]"), _grey(), "has data type datetime64[s]"),
    ("ragged rows", [[0.1, 0.2], [0.3]], _grey(), "Image A is not an array of pixels"),
    ("None", None, _grey(), "has data type object"),
]


@pytest.mark.parametrize("case", ARRAY_CASES, ids=_ids(ARRAY_CASES))
def test_bad_arrays(tiny_package, case):
    _, a, b, message = case
    pkg, key, _ = tiny_package
    with pytest.raises(AMIFError) as e:
        fuse_images(a, b, pkg, key)
    assert message in str(e.value)


@pytest.mark.parametrize("dtype, value", [(np.float32, 3e38), (np.float64, 1e300)], ids=["float32", "float64"])
def test_huge_finite_values_fuse_without_nan(tiny_package, dtype, value):
    """Values near the type's limits: normalized without overflowing to NaN or Inf."""
    a = _grey().astype(dtype)
    a[0, 0], a[0, 1] = value, -value
    r = fuse_images(a, _grey(), tiny_package[0])
    assert np.isfinite(r.fused).all() and 0 <= r.fused.min() <= r.fused.max() <= 1


# ---------------------------------------------------------------- 2D image files (CLI)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A valid PNG header claiming 60000 x 60000 pixels (3.6 G): Pillow refuses it as a bomb."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _save_png(arr):
    def make(path):
        Image.fromarray(arr).save(path)

    return make


IMAGE_FILE_CASES = [
    # (id, writes the bad first image at the path given, message)
    ("empty file", lambda p: p.write_bytes(b""), "Cannot read image bad.png: cannot identify image file"),
    ("truncated", lambda p: p.write_bytes((p.parent / "a.png").read_bytes()[:200]), "Cannot read image bad.png"),
    ("text file", lambda p: p.write_text("not an image"), "Cannot read image bad.png"),
    ("non-UTF-8 noise", lambda p: p.write_bytes(bytes(range(256))), "Cannot read image bad.png"),
    ("decompression bomb", lambda p: p.write_bytes(_bomb_png()), "could be decompression bomb"),
    ("missing", lambda p: None, "Cannot read image bad.png"),
    ("a folder", lambda p: p.mkdir(), "Cannot read image bad.png"),
    ("other size", _save_png(np.zeros((40, 48), np.uint8)), "differ in size"),
    ("8x8 beside 40x48", _save_png(np.zeros((8, 8), np.uint8)), "differ in size (8x8 vs 40x48)"),
]


@pytest.mark.parametrize("case", IMAGE_FILE_CASES, ids=_ids(IMAGE_FILE_CASES))
def test_bad_image_file(tiny_package, files, tmp_path, capsys, case):
    _, make, message = case
    (tmp_path / "a.png").write_bytes((files / "a.png").read_bytes())
    bad = tmp_path / "bad.png"
    make(bad)
    out = tmp_path / "f.png"
    cli = ["fuse", str(bad), str(files / "b.png"), "-o", str(out), "-m", str(tiny_package[2] / "tiny")]
    _cli_error(cli, out, message, capsys)


def test_tiny_image_files(tiny_package, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        Image.fromarray((RNG.random((8, 12)) * 255).astype(np.uint8)).save(tmp_path / name)
    out = tmp_path / "f.png"
    model = str(tiny_package[2] / "tiny")
    cli = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "-m", model]
    _cli_error(cli, out, "12x8 pixels; fusion needs at least 16x16", capsys)


OUTPUT_CASES = [
    # (id, inputs, output name relative to tmp_path, message)
    ("2D into a volume file", "png", "f.nrrd", "name it .png or .jpg"),
    ("2D into a folder", "png", "outdir.png", "is a folder"),
    ("2D into a missing folder", "png", "none/f.png", "output folder"),
    ("volume into a PNG", "nrrd", "f.png", "Volume inputs give a volume output"),
    ("volume into a JPEG", "nrrd", "f.jpg", "Volume inputs give a volume output"),
    ("volume into .txt", "nrrd", "f.txt", "Cannot write f.txt"),
    ("volume without extension", "nrrd", "fused", "Cannot write fused"),
    ("volume into a folder", "nrrd", "outdir.nrrd", "is a folder"),
    ("volume into a missing folder", "nrrd", "none/f.nrrd", "output folder"),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=_ids(OUTPUT_CASES))
def test_bad_output(tiny_package, files, tmp_path, capsys, case):
    _, kind, name, message = case
    (tmp_path / "outdir.png").mkdir()
    (tmp_path / "outdir.nrrd").mkdir()
    out = tmp_path / name
    cli = ["fuse", str(files / f"a.{kind}"), str(files / f"b.{kind}"), "-o", str(out), "-q"]
    _cli_error([*cli, "-m", str(tiny_package[2] / "tiny")], out, message, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir.nrrd", "outdir.png"]


# ---------------------------------------------------------------- volumes (files through the CLI)


def _image(arr, spacing=(1.0, 1.0, 2.0), origin=None, vector=False):
    img = sitk.GetImageFromArray(arr, isVector=vector)
    img.SetSpacing(spacing[: img.GetDimension()])
    if origin is not None:
        img.SetOrigin(origin)
    return img


def _vol(shape=(4, 32, 32), dtype=np.float32):
    return (RNG.random(shape) * 100).astype(dtype)


def _vol_with(value):
    v = _vol()
    v[2, 10, 11] = value
    return v


VOLUME_CASES = [
    # (id, which input is bad, its SimpleITK image (or raw bytes), file suffix, message)
    ("NaN voxel", "b", _image(_vol_with(np.nan)), ".nrrd", "The second volume contains NaN or infinite values"),
    ("+Inf voxel", "a", _image(_vol_with(np.inf)), ".nrrd", "The first volume contains NaN or infinite values"),
    ("-Inf float64 voxel", "b", _image(_vol_with(-np.inf).astype(np.float64)), ".mha", "contains NaN or infinite"),
    ("all NaN", "a", _image(np.full((4, 32, 32), np.nan, np.float32)), ".nrrd", "contains NaN or infinite"),
    ("2D image as first", "a", _image(_vol((32, 32))), ".nrrd", "The first volume is a 2D image; a 3D volume"),
    ("2D image as second", "b", _image(_vol((32, 32))), ".mha", "The second volume is a 2D image"),
    ("4D image", "a", sitk.Image([8, 8, 8, 2], sitk.sitkFloat32), ".nrrd", "is a 4D image; a 3D volume is needed"),
    ("one sagittal slice", "a", _image(_vol((12, 32, 1))), ".nrrd", "axial slices are 1x32 voxels"),
    ("one coronal slice", "a", _image(_vol((12, 1, 32))), ".nrrd", "axial slices are 32x1 voxels"),
    ("8x8 slices", "a", _image(_vol((4, 8, 8))), ".nrrd", "axial slices are 8x8 voxels"),
    ("a single voxel", "a", _image(_vol((1, 1, 1))), ".nrrd", "axial slices are 1x1 voxels"),
    ("no overlap", "b", _image(_vol(), origin=(5000.0, 0.0, 0.0)), ".nrrd", "do not overlap in space"),
    ("no overlap in depth", "b", _image(_vol(), origin=(0.0, 0.0, -50.0)), ".nrrd", "do not overlap in space"),
    ("two components", "b", _image(_vol((4, 32, 32, 2)), vector=True), ".nrrd", "has 2 components"),
    ("five components", "b", _image(_vol((4, 32, 32, 5)), vector=True), ".mha", "has 5 components"),
    (
        "colour first volume",
        "a",
        _image(_vol((4, 32, 32, 3), np.uint8), vector=True),
        ".nrrd",
        "The first volume (MRI) must be a grey",
    ),
    ("complex voxels", "b", _image(_vol().astype(np.complex64)), ".mha", "has 2 components"),  # read as a vector
    ("empty file", "a", b"", ".nrrd", "Cannot read bad.nrrd as an image volume"),
    ("text file", "a", b"hello, not a volume", ".nii.gz", "Cannot read bad.nii.gz as an image volume"),
    ("non-UTF-8 noise", "b", bytes(range(256)) * 8, ".mha", "Cannot read bad.mha as an image volume"),
    (
        "NRRD header that lies",
        "a",
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 32 32 400\nencoding: raw\n\n" + bytes(64),
        ".nrrd",
        "Cannot read bad.nrrd as an image volume",
    ),
    (
        "NRRD header with a bad type",
        "a",
        b"NRRD0004\ntype: quaternion\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n" + bytes(64),
        ".nrrd",
        "Cannot read bad.nrrd as an image volume",
    ),
]


def _truncated_nrrd(path: Path, files: Path):
    data = (files / "a.nrrd").read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", VOLUME_CASES, ids=_ids(VOLUME_CASES))
def test_bad_volume_file(tiny_package, files, tmp_path, capsys, case):
    _, which, img, suffix, message = case
    bad = tmp_path / f"bad{suffix}"
    if isinstance(img, bytes):
        bad.write_bytes(img)
    else:
        sitk.WriteImage(img, str(bad))
    a, b = (bad, files / "b.nrrd") if which == "a" else (files / "a.nrrd", bad)
    out = tmp_path / "f.nrrd"
    cli = ["fuse", str(a), str(b), "-o", str(out), "-m", str(tiny_package[2] / "tiny"), "-q"]
    _cli_error(cli, out, message, capsys)


def test_truncated_and_missing_volume_files(tiny_package, files, tmp_path, capsys):
    out = tmp_path / "f.nrrd"
    model = ["-m", str(tiny_package[2] / "tiny"), "-q"]
    _truncated_nrrd(tmp_path / "cut.nrrd", files)
    _cli_error(
        ["fuse", str(tmp_path / "cut.nrrd"), str(files / "b.nrrd"), "-o", str(out), *model],
        out,
        "Cannot read cut.nrrd as an image volume",
        capsys,
    )
    _cli_error(
        ["fuse", str(files / "a.nrrd"), str(tmp_path / "none.nrrd"), "-o", str(out), *model],
        out,
        "Cannot read none.nrrd as an image volume",
        capsys,
    )


WINDOW_CASES = [
    ("NaN low", dict(window_a=(float("nan"), 1.0))),
    ("Inf high", dict(window_a=(0.0, float("inf")))),
    ("reversed", dict(window_b=(100.0, 0.0))),
    ("empty", dict(window_b=(5.0, 5.0))),
]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=_ids(WINDOW_CASES))
def test_bad_intensity_window(tiny_package, case):
    _, windows = case
    with pytest.raises(AMIFError, match="intensity window must be two finite values"):
        fuse_volumes(_image(_vol()), _image(_vol()), tiny_package[0], **windows)


@pytest.mark.parametrize(
    "case", [("numpy array", "is not an image"), ("None", "is not an image")], ids=["numpy array", "None"]
)
def test_volume_not_an_image(tiny_package, case):
    kind, message = case
    a = _vol() if kind == "numpy array" else None
    with pytest.raises(AMIFError, match=f"The first volume {message}"):
        fuse_volumes(a, _image(_vol()), tiny_package[0])


@pytest.mark.parametrize("kind", ["complex", "label"])
def test_complex_or_label_voxels_refused(tiny_package, kind):
    if kind == "complex":
        bad = _image(_vol().astype(np.complex64))
    else:
        bad = sitk.Cast(_image(_vol().astype(np.uint8)), sitk.sitkLabelUInt8)
    with pytest.raises(AMIFError, match=f"The second volume has {kind} of .* voxels; grey or RGB"):
        fuse_volumes(_image(_vol()), bad, tiny_package[0])


# ---------------------------------------------------------------- MRML: AMIFFusionLib.logic.fuse


SHAPE = (6, 24, 28)  # k, j, i


def _matrix(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.diag([*spacing, 1.0])
    m[:3, 3] = origin
    return m


def _node(scene, arr, name, ijk_to_ras=None):
    cls = "vtkMRMLVectorVolumeNode" if arr.ndim == 4 else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(_matrix() if ijk_to_ras is None else ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, arr)
    return node


def _snapshot(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _ijk_to_ras(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _mrml_volume(arr=None, seed=0):
    return (np.random.default_rng(seed).random(SHAPE) * 200).astype(np.float32) if arr is None else arr


def _nan_volume(value=np.nan):
    v = _mrml_volume(seed=3)
    v[2, 5, 6] = value
    return v


def _key_bytes(content: bytes):
    def make(tmp_path, package):
        p = tmp_path / "bad.amifkey"
        p.write_bytes(content)
        return dict(key_path=p)

    return make


def _tampered(tmp_path, package):
    stem = _copy_package(package, tmp_path)
    _, weights = package_paths(stem)
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x80
    weights.write_bytes(bytes(data))
    return dict(model_path=str(stem) + ".json")


def _wrong_shape_weights(tmp_path, package):
    stem = _copy_package(package, tmp_path)
    _, weights = package_paths(stem)
    state = load_file(str(weights))
    _widen(state)
    save_file(state, str(weights))
    _rehash(stem)
    return dict(model_path=str(stem) + ".json")


def _manifest_text(text):
    def make(tmp_path, package):
        stem = _copy_package(package, tmp_path)
        package_paths(stem)[0].write_text(text)
        return dict(model_path=str(stem) + ".json")

    return make


def _second(arr=None, ijk_to_ras=None):
    return lambda tmp_path, package: dict(second=(arr, ijk_to_ras))


def _first(arr=None, ijk_to_ras=None):
    return lambda tmp_path, package: dict(first=(arr, ijk_to_ras))


def _nan_origin():
    m = _matrix()
    m[1, 3] = np.nan
    return m


def _no_voxels(tmp_path, package):
    return dict(second="no voxels")


MRML_CASES = [
    # (id, makes the bad argument(s), message)
    ("garbled key file", _key_bytes(b'{"format": "amif-key", "ver'), "not valid JSON"),
    ("empty key file", _key_bytes(b""), "not valid JSON"),
    ("non-UTF-8 key file", _key_bytes(b"\xff\xfe\xfa"), "cannot be read: UnicodeDecodeError"),
    (
        "key with a wrong secret size",
        _key_bytes(json.dumps({**_key_dict(), "secret": "AAAA"}).encode()),
        "must be 32 bytes",
    ),
    ("tampered model", _tampered, "does not match the hash"),
    ("weights of the wrong shape", _wrong_shape_weights, "tensor 'encoder.e1.bias'"),
    ("garbled manifest", _manifest_text('{"format": "amif-model",'), "not readable JSON"),
    ("NaN in the second volume", _second(_nan_volume()), "The second volume contains NaN or infinite values"),
    ("NaN in the first volume", _first(_nan_volume()), "The first volume contains NaN or infinite values"),
    ("Inf in the second volume", _second(_nan_volume(np.inf)), "contains NaN or infinite values"),
    ("2D volume (one sagittal slice)", _first(_mrml_volume(_mrml_volume()[:, :, :1])), "axial slices are 1x24 voxels"),
    ("tiny volume", _first(_mrml_volume(_mrml_volume()[:, :8, :8])), "axial slices are 8x8 voxels"),
    ("volumes that do not overlap", _second(ijk_to_ras=_matrix(origin=(0.0, 900.0, 0.0))), "do not overlap"),
    ("NaN in the geometry", _second(ijk_to_ras=_nan_origin()), "degenerate geometry"),
    ("zero spacing", _second(ijk_to_ras=_matrix(spacing=(1.0, 0.0, 1.0))), "degenerate geometry"),
    ("two components", _second(np.zeros((*SHAPE, 2), np.uint8)), "has 2 components"),
    ("no voxels", _no_voxels, "The second volume has no voxels"),
]


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.mark.parametrize("with_output", [True, False], ids=["existing output", "new output"])
@pytest.mark.parametrize("case", MRML_CASES, ids=_ids(MRML_CASES))
def test_mrml_errors_leave_the_scene_unchanged(tiny_package, scene, tmp_path, case, with_output):
    _, make, message = case
    package = tiny_package[2]
    bad = make(tmp_path, package)
    kwargs = dict(model_path=package / "tiny.json", key_path=tiny_package[1])
    for role, seed in (("first", 1), ("second", 2)):
        spec = bad.pop(role, (None, None))
        if spec == "no voxels":
            kwargs[f"{role}_node"] = node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", role)
            image = vtk.vtkImageData()
            image.SetDimensions(0, 0, 0)
            node.SetAndObserveImageData(image)
            continue
        arr, m = spec
        kwargs[f"{role}_node"] = _node(scene, _mrml_volume(arr, seed), role, m)
    kwargs.update(bad)
    existing = _node(scene, np.zeros(SHAPE, np.float32), "existing-output")
    existing.SetAttribute("user", "kept")
    before = (slicer.util.arrayFromVolume(existing).copy(), _ijk_to_ras(existing), existing.GetAttributeNames())
    ids = _snapshot(scene)
    with pytest.raises(AMIFError) as e:
        logic.fuse(output_node=existing if with_output else None, **kwargs)
    assert message in str(e.value)
    assert _snapshot(scene) == ids
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(existing), before[0])
    np.testing.assert_array_equal(_ijk_to_ras(existing), before[1])
    assert existing.GetAttributeNames() == before[2] and existing.GetAttribute("user") == "kept"


def test_mrml_model_tampered_after_a_good_run(tiny_package, scene, tmp_path):
    """The adapter keeps loaded models; a package changed on disk afterwards is checked again."""
    stem = _copy_package(tiny_package[2], tmp_path)
    a = _node(scene, _mrml_volume(seed=5), "mri")
    b = _node(scene, _mrml_volume(seed=6), "pet")
    out = logic.fuse(a, b, model_path=str(stem) + ".json").node
    before, ids = slicer.util.arrayFromVolume(out).copy(), _snapshot(scene)
    _, weights = package_paths(stem)
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x80
    weights.write_bytes(bytes(data))
    for output in (out, None):
        with pytest.raises(AMIFError, match="does not match the hash"):
            logic.fuse(a, b, output, model_path=str(stem) + ".json")
    assert _snapshot(scene) == ids
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), before)


def test_mrml_key_state_on_bad_files(tiny_package, tmp_path):
    """The panel's pre-run check: an unreadable key is a state with its reason, a bad manifest an error."""
    package = tiny_package[2] / "tiny.json"
    (tmp_path / "bad.amifkey").write_bytes(b"[" * 2000)
    st = logic.key_state(tmp_path / "bad.amifkey", package)
    assert st.state == "unreadable" and "not valid JSON" in st.message
    (tmp_path / "bad.amifkey").write_bytes(b"[" * 100_000)
    st = logic.key_state(tmp_path / "bad.amifkey", package)
    assert st.state == "unreadable" and "too large" in st.message
    (tmp_path / "m.json").write_bytes(b"\xff\xfe")
    with pytest.raises(AMIFError, match="not readable JSON"):
        logic.key_state(None, tmp_path / "m.json")
