"""Packed training: several runs of one model shape trained in one process, each member exactly as if alone.

Torch only. A pack is a list of standalone `run_setup.Setup`s (each built by `run_setup.prepare` from its own config, so
each member is initialised, subsampled and shuffled exactly as the standalone run of its seed, and keeps its own
optimiser, schedule, detector and history). Only the training pass is shared: an MLP pack stacks the members'
weights layer by layer and runs one batched matmul (`torch.baddbmm`) per layer for all members, on a batch that
gathers each member's own mini-batch (a ResNet-20 pack: grouped convolutions, ncflow.engine.pack_resnet); the loss is the sum of the members' mean losses, so each member's gradient is
its own; each member's own torch optimiser then steps (per-member learning rate and weight decay exactly as
torch's `weight_decay`). After the pass each member is measured, detected and emitted by the engine as usual
(`loop.finish_row`, `loop.record_epoch`), so its resume state is a standalone run's and `ncflow train --resume`
continues any member alone. A member that stops (divergence, `stop_after_collapse`) leaves the pack; the others
go on.

The batched pass is the default on CUDA (`batches_members`); on the CPU members share the process but train one
after another (`loop.train_one_epoch`): exact, and as fast as separate runs. A pack with a regularised member (Han
et al.'s `reg`, which needs each member's penultimate features in its loss) trains one after another on CUDA too,
so its members may differ in regulariser, λ and unplug, each exactly as alone.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ncflow.engine import loop
from ncflow.engine.config import ConfigError
from ncflow.engine.data import batch_indices
from ncflow.engine.models import MLP, ResNet20
from ncflow.engine.pack_resnet import packed_resnet_logits
from ncflow.engine.run_setup import Setup, Sink
from ncshared.run_config import PACK, RunConfig, params_marked

# What the members of one pack must share (marked PACK): the model's shape, the data and its batches, the schedule
# of phases and epochs. They may differ in seed, weight decay, learning rate (and momentum), classifier, intervention
# source and α, regulariser (and its unplug), and every reporting setting.
PACK_SHARED_FIELDS = params_marked(PACK)
ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh,
}


AUTO_PACK_CUDA = 16  # `--pack auto` on CUDA: at most this many members …
AUTO_PACK_MEMBER_BYTES = 256 << 20  # … and one per 256 MiB of free device memory (the paper's models need less)


def auto_pack_size(device: torch.device) -> int:
    """`--pack auto`: 1 on the CPU (compute-bound: packing gains nothing there); on CUDA up to AUTO_PACK_CUDA,
    bounded by the free device memory."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(AUTO_PACK_CUDA, free // AUTO_PACK_MEMBER_BYTES))


def pack_key(config: RunConfig) -> tuple[str, ...]:
    """Configs with equal keys can share a pack (an intervention only with other interventions)."""
    params = config.as_params()
    return (*(params[name] for name in PACK_SHARED_FIELDS), str(config.init_from != "none"))


def check_packable(configs: Sequence[RunConfig]) -> None:
    """ConfigError naming the first field two members differ in."""
    first = configs[0].as_params()
    for config in configs[1:]:
        params = config.as_params()
        for name in PACK_SHARED_FIELDS:
            if params[name] != first[name]:
                raise ConfigError(f"seeds: the members of a pack must share {name}; got {first[name]} and {params[name]}")
        if (config.init_from == "none") != (configs[0].init_from == "none"):
            raise ConfigError("seeds: the members of a pack are all intervention runs (init_from) or none is")


def packed_mlp_logits(models: Sequence[MLP], inputs: torch.Tensor) -> torch.Tensor:
    """(S, B, K) logits of S MLPs of one shape on (S, B, D) inputs: one `baddbmm` per layer for all members.

    The weights are stacked on every call, so gradients flow back into each member's own parameters."""
    activation = ACTIVATION_FUNCTIONS[models[0].activation]
    layers = [model.linear_layers() for model in models]
    out = inputs
    for position, linears in enumerate(zip(*layers)):
        weight = torch.stack([linear.weight for linear in linears])
        bias = torch.stack([linear.bias for linear in linears])
        out = torch.baddbmm(bias.unsqueeze(1), out, weight.transpose(1, 2))
        if position < len(layers[0]) - 1:
            out = activation(out)
    return out


def member_losses(logits: torch.Tensor, labels: torch.Tensor, phase: int) -> torch.Tensor:
    """(S,) each member's mean loss over its batch: cross-entropy in Phase 1, MSE on one-hot targets in Phase 2."""
    members, batch, classes = logits.shape
    if phase == 1:
        return F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="none").view(members, batch).mean(1)
    targets = F.one_hot(labels, classes).to(logits.dtype)
    return (logits - targets).square().mean(dim=(1, 2))


def packed_logits(models: Sequence[torch.nn.Module], inputs: torch.Tensor) -> torch.Tensor:
    """(S, B, K) logits of the members on their (S, B, …) mini-batches in one batched pass."""
    if isinstance(models[0], MLP):
        return packed_mlp_logits(models, inputs.flatten(2))
    return packed_resnet_logits(models, inputs)


def train_batched_pack_epoch(members: Sequence[Setup], phase: int) -> list[float]:
    """One pass of each member's own shuffled mini-batches, all members in each step; each member's mean loss
    (one host sync per epoch)."""
    models = [member.model for member in members]
    for model in models:
        model.train()
    device, batch_size = members[0].device, members[0].config.batch_size
    num_samples = len(members[0].data.train_y)
    orders = [batch_indices(num_samples, batch_size, member.batch_order, device=device) for member in members]
    shared = all(member.data.train_x is members[0].data.train_x for member in members)
    loss_sums = torch.zeros(len(members), device=device)
    for step in range(len(orders[0])):
        if shared:  # one gather for all members
            index = torch.stack([order[step] for order in orders])
            inputs, labels = members[0].data.train_x[index], members[0].data.train_y[index]
        else:
            inputs = torch.stack([m.data.train_x[order[step]] for m, order in zip(members, orders)])
            labels = torch.stack([m.data.train_y[order[step]] for m, order in zip(members, orders)])
        losses = member_losses(packed_logits(models, inputs), labels, phase)
        for member in members:
            member.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        for member in members:
            member.optimizer.step()
        loss_sums += losses.detach()
    return (loss_sums / len(orders[0])).tolist()


def batchable(members: Sequence[Setup]) -> bool:
    """Whether the members can share a batched pass: all MLPs, or all ResNet-20s, none regularised (the batched pass
    computes no penultimate features for the regulariser)."""
    if any(member.config.reg != "none" for member in members):
        return False
    return any(all(isinstance(member.model, kind) for member in members) for kind in (MLP, ResNet20))


def batches_members(members: Sequence[Setup]) -> bool:
    """The batched path's default: on CUDA. On the CPU, which is compute-bound, batched matmuls gain nothing
    (0.73–0.88× the throughput of separate processes, benchmarks/bench_pack.py), so members train one after
    another there — exactly as fast as alone."""
    return members[0].device.type == "cuda" and batchable(members)


def train_pack_epoch(members: Sequence[Setup], phase: int, batched: bool | None = None,
                     epoch: int | None = None) -> list[float]:
    """Each member's mean training loss of one epoch (`epoch`, 1-based: whether a regulariser is unplugged yet):
    batched (`train_batched_pack_epoch`; the default on CUDA), or one after another (`loop.train_one_epoch`)."""
    if batched is None:
        batched = batches_members(members)
    if batched:
        if not batchable(members):
            raise ValueError("a batched pack needs unregularised members of one architecture (MLP or ResNet-20)")
        return train_batched_pack_epoch(members, phase)
    return [loop.train_one_epoch(member, phase, epoch) for member in members]


def share_data(members: Sequence[Setup]) -> None:
    """Members with the same training set (every balanced pack) hold one copy of the data, so a step gathers once."""
    first = members[0].data
    for member in members[1:]:
        data = member.data
        if data.train_x.shape == first.train_x.shape and torch.equal(data.train_y, first.train_y) and \
                torch.equal(data.train_x, first.train_x) and torch.equal(data.test_x, first.test_x):
            member.data = first


def run_pack(members: Sequence[Setup], sinks: Sequence[Sink], progress: bool, batched: bool | None = None) -> None:
    """`loop.run_epochs` for a pack: each epoch one shared training pass (`train_pack_epoch`), then each member
    measured and emitted. A member's `time/epoch_s` is the shared training pass plus its own measurement."""
    starts = {member.start_epoch for member in members}
    if len(starts) != 1:
        raise ConfigError(f"seeds: the members of a pack must start at the same epoch; got {sorted(starts)}")
    active = [index for index, member in enumerate(members) if not loop.already_stopped(member)]
    first = members[0].config
    bar = tqdm(range(starts.pop(), first.total_epochs + 1), desc=f"pack of {len(members)}", disable=not progress,
               dynamic_ncols=True)
    try:
        for epoch in bar:
            if not active:
                break
            started = time.perf_counter()
            phase = first.phase_of(epoch)
            lrs = [members[index].optimizer.param_groups[0]["lr"] for index in active]
            losses = train_pack_epoch([members[index] for index in active], phase, batched, epoch)
            trained_s = time.perf_counter() - started
            going = []
            for index, lr, loss in zip(active, lrs, losses):
                member = members[index]
                row = loop.finish_row(member, epoch, phase, lr, loss, time.perf_counter() - trained_s)
                if not loop.record_epoch(member, sinks[index], epoch, row):
                    going.append(index)
            bar.set_postfix(**loop.progress_fields(members[active[0]].history[-1]), members=len(going))
            active = going
    finally:
        bar.close()
