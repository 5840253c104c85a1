import numpy as np
import pytest
import torch

from amif.errors import AMIFError
from amif.identifier import identifier_mask, layout_lines
from amif.network import AMIFNet, decoder_channels, parameter_count, slice_coords, widen_decoder


def test_default_budget():
    net = AMIFNet()
    assert parameter_count(net) <= 1_000_000


@pytest.mark.parametrize("h, w", [(64, 64), (37, 50), (255, 130)])
def test_any_size_and_range(tiny_package, h, w):
    net = tiny_package[0].net
    a, b = torch.rand(2, 1, h, w), torch.rand(2, 1, h, w)
    with torch.no_grad():
        y = net(a, b, torch.zeros(256))
    assert y.shape == (2, 1, h, w) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_several_codes_share_one_encoder_pass(tiny_package):
    net = tiny_package[0].net
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    codes = torch.randn(6, 256).sign()
    with torch.no_grad():
        y = net(a, b, codes)
        y1 = net(a, b, codes[2:4])
    assert y.shape == (6, 1, 32, 32)
    torch.testing.assert_close(y[2:4], y1)
    assert not torch.allclose(y[0:2], y[2:4])
    with pytest.raises(ValueError):
        net(a, b, codes[:3])


def test_phases_given_for_some_codes_replace_only_those_codes_embeddings(tiny_package):
    net = tiny_package[0].net
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    codes = torch.randn(4, 256).sign()
    phases = net.key.phases(codes)
    with torch.no_grad():
        y = net(a, b, codes)
        torch.testing.assert_close(net(a, b, codes, phases=phases), y)  # a code's own angles: the same output
        phases[2:] = net.key.phases(codes[:2])  # the second code set takes the first one's angles
        y2 = net(a, b, codes, phases=phases)
    torch.testing.assert_close(y2[:2], y[:2])
    torch.testing.assert_close(y2[2:], y[:2])
    assert not torch.allclose(y[2:], y[:2])


def test_coords_cover_the_slice():
    c = slice_coords(1, 4, 8)[0]
    assert torch.allclose(c[0, 0], torch.tensor([-7, -5, -3, -1, 1, 3, 5, 7]) / 8)
    assert torch.allclose(c[1, :, 0], torch.tensor([-3.0, -1, 1, 3]) / 4)


def test_identifier_layout_scales_with_slice():
    assert layout_lines("AMIF DEMO · UNLICENSED") == ["AMIF DEMO", "UNLICENSED"]
    m1, m2 = identifier_mask("AMIF DEMO · UNLICENSED", 128, 128), identifier_mask("AMIF DEMO · UNLICENSED", 512, 512)
    assert 0.03 < m1.mean() < 0.2
    assert abs(m1.mean() - m2.mean()) < 0.01
    small = m2.reshape(128, 4, 128, 4).mean(axis=(1, 3))
    assert np.corrcoef(small.ravel(), m1.ravel())[0, 1] > 0.9
    with pytest.raises(AMIFError, match="glyph"):
        identifier_mask("héllo", 64, 64)


def test_widen_decoder_keeps_the_function_and_can_train_the_new_channels(tiny_package):
    net = tiny_package[0].net
    torch.manual_seed(1)
    wide = widen_decoder(net, 2)
    assert decoder_channels(wide.cfg) == [2 * c for c in decoder_channels(net.cfg)]
    assert parameter_count(wide) > parameter_count(net)
    a, b = torch.rand(2, 1, 1, 40, 44) * 0.6 + 0.2
    codes = [torch.zeros(256), torch.ones(256), torch.randn(256).sign(), torch.randn(2, 256)]
    with torch.no_grad():
        for code in codes:
            y, yw = net(a, b, code), wide(a, b, code)
            assert ((y > 0) & (y < 1)).float().mean() > 0.5  # not hidden by the clamp
            assert torch.allclose(y, yw, atol=1e-6)
    wide(a, b, codes[2]).mean().backward()  # the layers reading the new channels start at zero, yet learn
    old = decoder_channels(net.cfg)[2]
    assert float(wide.decoder.head.weight.grad[:, old:].abs().sum()) > 0
    assert float(wide.decoder.head.weight.detach()[:, old:].abs().sum()) == 0
