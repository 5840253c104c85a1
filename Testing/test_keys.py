import json

import numpy as np
import pytest

from amif.errors import AMIFError
from amif.keys import code_from_secret, generate_key, hkdf_sha256, load_key, save_key


def test_hkdf_rfc5869_case_1():
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_sha256(ikm, info, 42, salt)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_code_is_256_signs_and_bound_to_model():
    s = bytes(range(32))
    c = code_from_secret(s, "m1")
    assert c.shape == (256,) and set(np.unique(c)) == {-1.0, 1.0}
    assert np.array_equal(c, code_from_secret(s, "m1"))
    assert (c != code_from_secret(s, "m2")).sum() > 64


def test_roundtrip_and_secret_never_shown(tmp_path):
    k = generate_key("m", "Lab")
    p = save_key(k, tmp_path / "k.amifkey")
    k2 = load_key(p)
    assert k2 == k and np.array_equal(k2.code(), k.code())
    assert k.secret.hex() not in repr(k2) and "secret" not in str(k2)
    with pytest.raises(AMIFError, match="exists"):
        save_key(k, p)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: "not json {", "not valid JSON"),
        (lambda d: {**d, "format": "other"}, "not an AMIF key"),
        (lambda d: {**d, "version": 9}, "version"),
        (lambda d: {**d, "secret": "!!"}, "base64"),
        (lambda d: {**d, "secret": "AAAA"}, "32 bytes"),
        (lambda d: {**d, "key_id": "0000-0000-0000-0000"}, "damaged"),
        (lambda d: {k: v for k, v in d.items() if k != "licensee"}, "licensee"),
    ],
)
def test_bad_key_files(tmp_path, edit, message):
    d = json.loads(generate_key("m", "Lab").to_json())
    p = tmp_path / "bad.amifkey"
    out = edit(d)
    p.write_text(out if isinstance(out, str) else json.dumps(out))
    with pytest.raises(AMIFError, match=message):
        load_key(p)


def test_missing_key_file(tmp_path):
    with pytest.raises(AMIFError, match="does not exist"):
        load_key(tmp_path / "none.amifkey")
