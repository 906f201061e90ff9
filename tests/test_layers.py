"""meme.nets.layers: the transposed convolution whose bias gradient is a plain sum under bf16 autocast on a CPU gives
torch's layer's output and gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from meme.nets.layers import ConvTranspose2d
from meme.nets.polymnist import PublishedPolyMNISTModality

# (in, out, kernel, stride, padding, output_padding, input pixels): the PolyMNIST decoder's three, and an SVHN one
CASES = [(128, 64, 3, 2, 1, 0, 4), (64, 32, 3, 2, 1, 1, 7), (32, 3, 3, 2, 1, 1, 14), (64, 32, 4, 2, 1, 0, 8)]


def pair(case, seed=0):
    cin, cout, k, s, p, op, _ = case
    torch.manual_seed(seed)
    ours = ConvTranspose2d(cin, cout, k, s, p, output_padding=op)
    ref = nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=op)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def run(layer, x, g, autocast=True):
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(g)
    return y, x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}to{c[1]}at{c[6]}")
@pytest.mark.parametrize("scale", [1.0, 1e3])   # gradients of one size, and of sizes spread over six decades
def test_bf16_output_and_every_gradient_are_torch_layers_bit_for_bit(case, scale):
    ours, ref = pair(case)
    gen = torch.Generator().manual_seed(1)
    n, px = 96, case[6]
    x = torch.randn(n, case[0], px, px, generator=gen)
    out_px = ref(x[:1]).shape[-1]
    g = torch.randn(n, case[1], out_px, out_px, generator=gen) * torch.exp(
        torch.randn(n, 1, 1, 1, generator=gen) * (3.0 if scale > 1 else 0.0)) * scale + 0.1
    got, want = run(ours, x, g.bfloat16()), run(ref, x, g.bfloat16())
    assert got[0].dtype == torch.bfloat16 and got[0].grad_fn.name() == "_ConvTranspose2dSumBiasBackward"
    assert want[0].grad_fn.name() != got[0].grad_fn.name()   # torch's layer took its own kernel
    for a, b, what in zip(got, want, ("output", "input grad", "weight grad", "bias grad")):
        assert a.dtype == b.dtype and torch.equal(a, b), what
    assert got[3].abs().sum() > 0


def test_fp32_evaluation_and_no_autocast_keep_torchs_path_with_the_same_numbers():
    ours, ref = pair(CASES[1])
    x = torch.randn(8, 64, 7, 7)
    g = torch.randn(8, 32, 14, 14)
    got, want = run(ours, x, g, autocast=False), run(ref, x, g, autocast=False)
    assert got[0].grad_fn.name() == want[0].grad_fn.name()
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}to{c[1]}at{c[6]}")
def test_without_gradients_it_runs_channels_last_with_torchs_output_in_fp32_and_bf16(case):
    ours, ref = pair(case)
    x = torch.randn(64, case[0], case[6], case[6])
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            got, want = ours(x), ref(x)
        assert got.is_contiguous(memory_format=torch.channels_last) and not want.is_contiguous(
            memory_format=torch.channels_last)
        assert got.dtype == want.dtype and torch.equal(got, want), bf16


def reference_decoder(net: PublishedPolyMNISTModality) -> nn.Sequential:
    """The published decoder with torch's layers, and ``net``'s weights."""
    ref = nn.Sequential(nn.Linear(net.latent_dim, 2048), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
                        nn.ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),
                        nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
                        nn.ConvTranspose2d(32, 3, 3, 2, 1, output_padding=1))
    ref.load_state_dict(net.dec.state_dict())
    return ref


def test_the_polymnist_decoder_gives_torchs_numbers_in_both_precisions_with_and_without_gradients():
    torch.manual_seed(3)
    net = PublishedPolyMNISTModality(32)
    ref = reference_decoder(net)
    z = torch.randn(300, 32)
    g = torch.randn(300, 3, 28, 28)
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            got, want = net.decode(z), ref(z)
        assert got.is_contiguous() and torch.equal(got, want), bf16
        for module in (net, ref):
            module.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net.decode(z) if module is net else ref(z)
            out.backward(g.to(out.dtype))
        for (name, a), b in zip(net.dec.named_parameters(), ref.parameters()):
            assert torch.equal(a.grad, b.grad), (bf16, name)


def test_an_unbatched_input_takes_torchs_path_in_every_mode():
    ours, ref = pair(CASES[1])
    x, g = torch.randn(64, 7, 7), torch.randn(32, 14, 14)
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            assert torch.equal(ours(x), ref(x)), bf16
        got, want = run(ours, x, g.to(torch.bfloat16 if bf16 else torch.float32), bf16), run(
            ref, x, g.to(torch.bfloat16 if bf16 else torch.float32), bf16)
        assert got[0].grad_fn.name() == want[0].grad_fn.name() and all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_layer_used_twice_in_a_step_adds_its_gradients_in_fp32():
    ours, _ = pair(CASES[0])
    x1, x2 = torch.randn(16, 128, 4, 4), torch.randn(16, 128, 4, 4)
    g1, g2 = torch.randn(16, 64, 7, 7).bfloat16(), torch.randn(16, 64, 7, 7).bfloat16()
    singles = [run(ours, x, g)[2:] for x, g in ((x1, g1), (x2, g2))]
    ours.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, y2 = ours(x1), ours(x2)
    torch.autograd.backward([y1, y2], [g1, g2])
    assert ours.weight.grad.dtype == torch.float32
    assert torch.equal(ours.weight.grad, singles[0][0] + singles[1][0])
    assert torch.equal(ours.bias.grad, singles[0][1] + singles[1][1])


def test_the_state_dict_is_torch_layers():
    ours, ref = pair(CASES[2])
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    assert isinstance(ours, nn.ConvTranspose2d)


def test_the_published_polymnist_decoder_uses_it_and_the_two_modality_networks_do_not():
    from meme.nets.shaped import ImageModality
    from meme.nets.svhn import SVHNModality

    dec = PublishedPolyMNISTModality(16).dec
    assert [type(m) for m in dec if isinstance(m, nn.ConvTranspose2d)] == [ConvTranspose2d] * 3
    for net in (SVHNModality(16), ImageModality(16, shape=(3, 32, 32))):
        assert {type(m) for m in net.modules() if isinstance(m, nn.ConvTranspose2d)} == {nn.ConvTranspose2d}
