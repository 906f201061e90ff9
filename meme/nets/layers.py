"""Layers that compute what ``torch.nn``'s compute, in less time where a CPU kernel of torch's is slow."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ConvTranspose2dSumBias(torch.autograd.Function):
    """``F.conv_transpose2d(x, weight, bias, ...)``, with the input and weight gradients from torch's kernel asked
    for those two alone, and the bias gradient as the sum of the output's gradient over the batch and the pixels,
    taken in NCHW order (a channels_last gradient sums in another order, and rounds differently now and then)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride, padding, output_padding, groups, dilation):
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, output_padding, groups, dilation)
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, output_padding, groups, dilation = ctx.args
        need = ctx.needs_input_grad
        gx, gw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, True,
                                                        output_padding, groups, [need[0], need[1], False])
        gb = grad.contiguous().sum((0, 2, 3)) if need[2] else None
        return gx, gw, gb, None, None, None, None, None


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (the same parameters, state dict and output values) that runs in channels_last where
    that keeps every number, and whose bias gradient is a plain sum where it trains under bf16 autocast on a CPU.

    * **Without gradients** (evaluation) it takes its input in channels_last: the same output bit for bit, in
      fp32 and bf16, without the two layout reorders oneDNN makes around every call (the published PolyMNIST
      decoder: 5.2 against 6.2 ms for 256 latents in bf16, 10.7 against 12.5 in fp32).
    * **In bf16 training** torch hands the bias gradient to oneDNN's weight-gradient kernel of the transposed
      convolution, and that kernel runs far longer with a bias than without: for the PolyMNIST decoder's three
      layers at 512 latents (4 -> 7 -> 14 -> 28 pixels), 11.3, 10.8 and 5.5 ms for the input, weight and bias
      gradients together against 8.0, 5.3 and 3.7 ms for the input and weight gradients, while the sum takes 0.3
      to 0.8 ms (this project's 2-core CPUs with AMX). So it asks torch's kernel for the input and weight
      gradients alone, sums the output's gradient (in NCHW order) for the bias, and runs in channels_last.
    * **fp32 training**, CUDA, an unbatched (C, H, W) input and an ``output_size`` keep torch's path and layout:
      there channels_last changes the gradients' last bits, and the bias costs nothing extra.

    The numbers: the output is torch's, bit for bit; in bf16 training the input and weight gradients are torch's
    kernel's, and the bias gradient, a bf16 sum accumulated in fp32, equals oneDNN's in every test
    (``tests/test_layers.py``). The weight and bias are cast to bf16 at every call rather than once per autocast
    region, so where a layer runs more than once in a step (a decoder over chunks of samples) its gradients from
    the calls add up in fp32 rather than bf16. So a network that changes to this layer trains to slightly
    different numbers in bf16: the networks of two-modality runs keep ``nn.ConvTranspose2d``, and with it the
    numbers they had. The output is channels_last where this layer chose it; a network ends with
    ``.contiguous()`` where its consumers want NCHW."""

    def forward(self, input: Tensor, output_size=None) -> Tensor:
        if output_size is not None or input.device.type != "cpu" or input.dim() != 4:   # unbatched: torch's
            return super().forward(input, output_size)
        if not torch.is_grad_enabled():
            return super().forward(input.contiguous(memory_format=torch.channels_last))
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        if self.bias is None or not bf16:
            return super().forward(input)
        dtype = torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            return _ConvTranspose2dSumBias.apply(input.to(dtype).contiguous(memory_format=torch.channels_last),
                                                 self.weight.to(dtype), self.bias.to(dtype), list(self.stride),
                                                 list(self.padding), list(self.output_padding), self.groups,
                                                 list(self.dilation))
