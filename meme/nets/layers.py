"""Layers that compute what ``torch.nn``'s compute, in less time where a CPU kernel of torch's is slow."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ConvTranspose2dSumBias(torch.autograd.Function):
    """``F.conv_transpose2d(x, weight, bias, ...)``, with the input and weight gradients from torch's kernel asked
    for those two alone, and the bias gradient as the sum of the output's gradient over the batch and the pixels."""

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
        gb = grad.sum((0, 2, 3)) if need[2] else None
        return gx, gw, gb, None, None, None, None, None


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (the same parameters, state dict and output) whose bias gradient is a plain sum where it
    trains under bf16 autocast on a CPU.

    There torch hands the bias gradient to oneDNN's weight-gradient kernel of the transposed convolution, and that
    kernel runs far longer with a bias than without: for the published PolyMNIST decoder's three layers at 512
    latents (4 -> 7 -> 14 -> 28 pixels), 11.3, 10.8 and 5.5 ms for the input, weight and bias gradients together,
    against 8.0, 5.3 and 3.7 ms for the input and weight gradients, while the sum takes 0.3 to 0.8 ms (this
    project's 2-core CPUs with AMX). fp32, plain convolutions and CUDA show no such cost and keep torch's path, as
    do evaluation (no gradient) and an ``output_size``.

    The numbers: the output is torch's, bit for bit; the input and weight gradients are torch's kernel's; the bias
    gradient, a bf16 sum accumulated in fp32, equals oneDNN's in every test (``tests/test_layers.py``). The weight
    and bias are cast to bf16 at every call rather than once per autocast region, so where a layer runs more than
    once in a step (a decoder over chunks of samples) its gradients from the calls add up in fp32 rather than bf16.
    So a network that changes to this layer trains to slightly different numbers in bf16: the networks of
    two-modality runs keep ``nn.ConvTranspose2d``, and with it the numbers they had."""

    def forward(self, input: Tensor, output_size=None) -> Tensor:
        if (self.bias is None or output_size is not None or input.device.type != "cpu" or not torch.is_grad_enabled()
                or not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") != torch.bfloat16):
            return super().forward(input, output_size)
        dtype = torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            return _ConvTranspose2dSumBias.apply(input.to(dtype), self.weight.to(dtype), self.bias.to(dtype),
                                                 list(self.stride), list(self.padding), list(self.output_padding),
                                                 self.groups, list(self.dilation))
