"""ResNet-20 members of a pack in one forward: grouped convolutions (`groups = S`) with BatchNorm over S × C channels.

Member m's images sit in channels m·C … (m+1)·C of one (B, S·C, H, W) batch (each member with its own mini-batch),
and every convolution is the members' kernels concatenated with `groups = S`, so no member sees another's channels.
BatchNorm normalises each channel over the batch, so its statistics are each member's own — exactly the standalone
member's; the running statistics are updated on concatenated copies and written back into each member's own
BatchNorm buffers (with its `num_batches_tracked`), so every member's eval-mode metrics and checkpoints are its
standalone run's. The head is one batched matmul. Training mode only: each member is measured on its own.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncflow.engine.models import BasicBlock, ResNet20


def _conv(x: Tensor, convs: Sequence[nn.Conv2d]) -> Tensor:
    first = convs[0]
    weight = torch.cat([conv.weight for conv in convs])
    return F.conv2d(x, weight, None, first.stride, first.padding, groups=len(convs))


def _batch_norm(x: Tensor, norms: Sequence[nn.BatchNorm2d]) -> Tensor:
    """Training-mode BatchNorm of every member's channels at once; each member's running statistics updated."""
    first = norms[0]
    running_mean = torch.cat([norm.running_mean for norm in norms])
    running_var = torch.cat([norm.running_var for norm in norms])
    out = F.batch_norm(x, running_mean, running_var, torch.cat([norm.weight for norm in norms]),
                       torch.cat([norm.bias for norm in norms]), True, first.momentum, first.eps)
    with torch.no_grad():
        for norm, mean, var in zip(norms, running_mean.chunk(len(norms)), running_var.chunk(len(norms))):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked.add_(1)
    return out


def _shortcut(x: Tensor, block: BasicBlock, members: int) -> Tensor:
    """Option A per member: subsample, and zero-pad each member's channels (half before, half after)."""
    if block.stride == 1 and block.extra_channels == 0:
        return x
    x = x[:, :, :: block.stride, :: block.stride]
    batch, channels, height, width = x.shape
    before = block.extra_channels // 2
    x = F.pad(x.view(batch, members, channels // members, height, width),
              (0, 0, 0, 0, before, block.extra_channels - before))
    return x.reshape(batch, -1, height, width)


def _block(x: Tensor, blocks: Sequence[BasicBlock]) -> Tensor:
    out = F.relu(_batch_norm(_conv(x, [b.conv1 for b in blocks]), [b.bn1 for b in blocks]))
    out = _batch_norm(_conv(out, [b.conv2 for b in blocks]), [b.bn2 for b in blocks])
    return F.relu(out + _shortcut(x, blocks[0], len(blocks)))


def packed_resnet_logits(models: Sequence[ResNet20], inputs: Tensor) -> Tensor:
    """(S, B, K) logits of S ResNet-20s (in training mode) on (S, B, C, H, W) inputs, one grouped pass."""
    members, batch = inputs.shape[:2]
    x = inputs.transpose(0, 1).reshape(batch, -1, *inputs.shape[3:])
    x = F.relu(_batch_norm(_conv(x, [m.conv for m in models]), [m.bn for m in models]))
    for stage in range(len(models[0].stages)):
        for index in range(len(models[0].stages[stage])):
            x = _block(x, [m.stages[stage][index] for m in models])
    features = x.mean(dim=(2, 3)).view(batch, members, -1).transpose(0, 1)
    weight = torch.stack([m.head.weight for m in models])
    bias = torch.stack([m.head.bias for m in models])
    return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))
