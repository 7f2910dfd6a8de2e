"""Benchmark `ncflow.collapse.metrics.collapse_metrics` against the per-sample outer-product reference and a training epoch.

    python benchmarks/bench_metrics.py [--n 60000] [--d 512] [--classes 10] [--repeats 3] [--device cpu] [--threads 1]

Three timings, interleaved in each repeat so that load from other processes hits them alike:
1. `collapse_metrics` on n × d float32 features (Gaussian clusters around separated class centres) with a random
   K × d classifier: all nine metrics.
2. The reference: the method of Papyan et al.'s NC code — for each batch of 128, for each class, the batch's
   per-sample outer products (h − μ_c)(h − μ_c)ᵀ summed into Σ_W (float64), then NC1 = Tr Σ_W / Tr Σ_B and
   Tr(Σ_W Σ_B⁺)/K with torch.linalg.pinv. It runs on the first --reference-n samples; its per-sample part is scaled
   linearly to n (the d × d pinv is a fixed cost, added once), and the output says so.
3. One training epoch of an MLP-5 (Flatten → (Linear 512 → ReLU)×5 → Linear 10, Adam, batch 128, cross-entropy) on
   n × 784 random inputs held as one tensor and indexed by randperm slices; and the metrics pass as training runs it:
   a no-grad eval forward of all n inputs to the penultimate features, then `collapse_metrics`.
Prints median and range of each (wall clock, and process CPU time as a cross-check), the speed-up over the
reference and metrics/epoch (with and without the forward), and checks that the reference and `collapse_metrics`
agree on NC1 and Tr(Σ_W Σ_B⁺)/K.
Goals (the performance budget): speed-up ≥ 10×, metrics pass ≤ 0.35 × one epoch.

Machine: 2 vCPU "Intel(R) Xeon(R) Processor" VM (AVX-512), 23 GiB RAM; Python 3.11.7, torch 2.14.1+cu130 (CPU),
numpy 2.4.6. Shared with other jobs during these runs (load average 2–4 on 2 cores), so wall-clock times with two
threads are inflated by preemption (OpenMP barriers); single-thread figures are the stable ones. Defaults
(60,000 × 512, K = 10, 3 repeats, reference on 5,000 samples scaled ×12); median wall-clock (range):

                                    --threads 1               2 threads (default)
  collapse_metrics                  0.205 s (0.200–0.282)     2.04 s (1.63–2.77)   (best call seen: 0.115 s)
  reference (outer products)        41.2 s  (17.3–46.5)       185 s  (48–213)
  MLP-5 epoch (batch 128, Adam)     11.6 s  (8.8–13.0)        80.6 s (29.9–85.7)
  eval forward (no grad)            1.78 s  (1.71–4.03)       3.45 s (2.87–3.65)
  speed-up over the reference       201×                      91×                  (goal ≥ 10×)
  metrics / epoch                   0.018                     0.025                (goal ≤ 0.35)
  (metrics + forward) / epoch       0.170                     0.068                (goal ≤ 0.35)
Agreement with the reference on NC1 and Tr(Σ_W Σ_B⁺)/K: relative gap < 1e-15 (2,000 × 64 and 5,000 × 512).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncflow.collapse.metrics import collapse_metrics  # noqa: E402

INPUT_DIM = 784  # MNIST pixels
HIDDEN_LAYERS = 5
REFERENCE_BATCH = 128  # batch size of the reference's outer-product accumulation, as in the original NC code


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60000, help="samples (features and training inputs)")
    parser.add_argument("--d", type=int, default=512, help="feature dimension = MLP width")
    parser.add_argument("--classes", type=int, default=10, help="K")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each measurement")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--reference-n", type=int, default=5000, help="samples the reference runs on (then scaled)")
    parser.add_argument("--batch", type=int, default=128, help="training batch size")
    parser.add_argument("--eval-batch", type=int, default=10000, help="batch size of the no-grad feature forward")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call; CPU time is the cross-check when other processes compete."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def clustered_features(
    n: int, d: int, classes: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """n × d float32 features: unit Gaussian noise around standard-normal class centres, shuffled labels.

    Centres lie √(2d) apart on average against a within-class spread of √d, so the classes are separated a bit
    (NC1 ≈ K/(K−1)).
    """
    labels = torch.randperm(n, generator=generator) % classes
    centres = torch.randn(classes, d, generator=generator)
    features = centres[labels] + torch.randn(n, d, generator=generator)
    return features.to(device), labels.to(device)


def reference_nc1(features: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[dict[str, float], float]:
    """Papyan et al.'s method: per-sample outer products per batch and class, pinv of the d × d Σ_B.

    Returns ({"nc1", "nc1_pinv"}, seconds of the fixed d × d part), so the per-sample part can be scaled.
    """
    h = features.to(torch.float64)
    d = h.shape[1]
    sums = torch.zeros(classes, d, dtype=torch.float64, device=h.device)
    counts = torch.zeros(classes, dtype=torch.float64, device=h.device)
    for start in range(0, len(h), REFERENCE_BATCH):
        batch, batch_labels = h[start:start + REFERENCE_BATCH], labels[start:start + REFERENCE_BATCH]
        for c in range(classes):
            members = batch[batch_labels == c]
            sums[c] += members.sum(0)
            counts[c] += len(members)
    means = sums / counts[:, None]
    within = torch.zeros(d, d, dtype=torch.float64, device=h.device)
    for start in range(0, len(h), REFERENCE_BATCH):
        batch, batch_labels = h[start:start + REFERENCE_BATCH], labels[start:start + REFERENCE_BATCH]
        for c in range(classes):
            z = batch[batch_labels == c] - means[c]
            within += (z[:, :, None] * z[:, None, :]).sum(0)  # Σ over the batch's samples of z zᵀ
    within /= len(h)
    fixed_start = time.perf_counter()
    centred = means - sums.sum(0) / counts.sum()
    between = centred.T @ centred / classes
    nc1 = (within.trace() / between.trace()).item()
    nc1_pinv = (torch.trace(within @ torch.linalg.pinv(between, hermitian=True)) / classes).item()
    return {"nc1": nc1, "nc1_pinv": nc1_pinv}, time.perf_counter() - fixed_start


def mlp5(width: int, classes: int) -> tuple[nn.Sequential, nn.Linear]:
    """Flatten → (Linear width → ReLU)×5 as the body, and the Linear head; returns (model, head)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for index in range(HIDDEN_LAYERS):
        layers += [nn.Linear(INPUT_DIM if index == 0 else width, width), nn.ReLU()]
    head = nn.Linear(width, classes)
    return nn.Sequential(*layers, head), head


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, labels: torch.Tensor, batch: int
) -> None:
    """One epoch: randperm slices, forward, cross-entropy backward, Adam step."""
    model.train()
    order = torch.randperm(len(inputs), device=inputs.device)
    for start in range(0, len(inputs), batch):
        index = order[start:start + batch]
        loss = nn.functional.cross_entropy(model(inputs[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.inference_mode()
def penultimate_features(model: nn.Sequential, inputs: torch.Tensor, eval_batch: int) -> torch.Tensor:
    """The eval-mode, no-grad forward of all inputs through the body (every layer but the head)."""
    model.eval()
    body = model[:-1]
    return torch.cat([body(inputs[start:start + eval_batch]) for start in range(0, len(inputs), eval_batch)])


def describe(name: str, samples: list[tuple[float, float]]) -> str:
    """'name: median wall s (range), median CPU s'."""
    wall = [sample[0] for sample in samples]
    cpu = statistics.median(sample[1] for sample in samples)
    return f"{name:<46s} {statistics.median(wall):8.3f} s  (range {min(wall):.3f}–{max(wall):.3f})  CPU {cpu:8.3f} s"


def median_of(samples: list[tuple[float, float]], column: int) -> float:
    """Median wall (column 0) or CPU (column 1) seconds."""
    return statistics.median(sample[column] for sample in samples)


def print_environment(device: torch.device) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print(f"torch {torch.__version__}, Python {platform.python_version()}, threads {torch.get_num_threads()}, "
          f"CPU {cpu} ({os.cpu_count()} logical cores), device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def check_agreement(features: torch.Tensor, labels: torch.Tensor, classes: int, weight: torch.Tensor) -> None:
    """NC1 and Tr(Σ_W Σ_B⁺)/K from collapse_metrics and the reference on the same (small) set."""
    reference, _ = reference_nc1(features, labels, classes)
    ours = collapse_metrics(features, labels, weight, None)
    gaps = {name: abs(ours[name] - reference[name]) / abs(reference[name]) for name in reference}
    print(f"agreement on {len(features)} × {features.shape[1]}: nc1 {ours['nc1']:.10g} vs {reference['nc1']:.10g}, "
          f"nc1_pinv {ours['nc1_pinv']:.10g} vs {reference['nc1_pinv']:.10g}; "
          f"max relative gap {max(gaps.values()):.1e}")
    if max(gaps.values()) > 1e-8:
        raise SystemExit("collapse_metrics and the reference disagree")


def timed_reference(
    features: torch.Tensor, labels: torch.Tensor, classes: int, reference_n: int, device: torch.device
) -> tuple[float, float]:
    """The reference's (wall, CPU) seconds for all n samples: per-sample part timed on reference_n, scaled."""
    wall, cpu = time.perf_counter(), time.process_time()
    _, fixed_seconds = reference_nc1(features[:reference_n], labels[:reference_n], classes)
    synchronize(device)
    scale = len(features) / reference_n
    per_sample_wall = time.perf_counter() - wall - fixed_seconds
    per_sample_cpu = time.process_time() - cpu - fixed_seconds
    return per_sample_wall * scale + fixed_seconds, per_sample_cpu * scale + fixed_seconds


def print_results(args: argparse.Namespace, reference_n: int, times: dict[str, list[tuple[float, float]]]) -> None:
    """Medians, ranges, the speed-up and the metrics/epoch ratios (wall clock; CPU time as a cross-check)."""
    print(f"\n{args.n} × {args.d} features, K = {args.classes}, {args.repeats} repeats: "
          "median wall-clock (range), median process CPU")
    print(describe("collapse_metrics (all 9 metrics)", times["metrics"]))
    print(describe("collapse_metrics on trained MLP-5 features", times["trained"]))
    print(describe("reference: outer products + pinv" + ("*" if reference_n < args.n else ""), times["reference"]))
    if reference_n < args.n:
        print(f"  * per-sample part timed on {reference_n} samples and scaled ×{args.n / reference_n:g}")
    print(describe(f"MLP-5 training epoch (batch {args.batch}, Adam)", times["epoch"]))
    print(describe(f"no-grad eval forward to features (batch {args.eval_batch})", times["forward"]))
    for column, clock in ((0, "wall"), (1, "CPU")):
        metrics, epoch = median_of(times["metrics"], column), median_of(times["epoch"], column)
        forward = median_of(times["forward"], column)
        speedup = median_of(times["reference"], column) / metrics
        print(f"\n[{clock}] speed-up over the reference:            {speedup:8.1f}×   (goal ≥ 10×)")
        print(f"[{clock}] metrics / epoch, collapse_metrics only:  {metrics / epoch:8.3f}    (goal ≤ 0.35)")
        print(f"[{clock}] metrics / epoch, with the eval forward:  {(metrics + forward) / epoch:8.3f}    (goal ≤ 0.35)")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    print_environment(device)

    features, labels = clustered_features(args.n, args.d, args.classes, generator, device)
    weight = torch.randn(args.classes, args.d, generator=generator).to(device)
    bias = torch.randn(args.classes, generator=generator).to(device)
    reference_n = min(args.reference_n, args.n)
    check_agreement(features[:2000, :64], labels[:2000], args.classes, weight[:, :64])
    check_agreement(features[:reference_n], labels[:reference_n], args.classes, weight)

    inputs = torch.randn(args.n, INPUT_DIM, generator=generator).to(device)
    train_labels = (torch.randperm(args.n, generator=generator) % args.classes).to(device)
    model, head = mlp5(args.d, args.classes)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    train_epoch(model, optimizer, inputs[: 20 * args.batch], train_labels[: 20 * args.batch], args.batch)  # warm-up
    collapse_metrics(features, labels, weight, bias)

    times: dict[str, list[tuple[float, float]]] = {"metrics": [], "reference": [], "epoch": [], "forward": []}
    for _ in range(args.repeats):
        times["metrics"].append(timed(lambda: collapse_metrics(features, labels, weight, bias), device))
        times["reference"].append(timed_reference(features, labels, args.classes, reference_n, device))
        times["epoch"].append(timed(lambda: train_epoch(model, optimizer, inputs, train_labels, args.batch), device))
        times["forward"].append(timed(lambda: penultimate_features(model, inputs, args.eval_batch), device))
    trained_features = penultimate_features(model, inputs, args.eval_batch)
    head_weight, head_bias = head.weight.detach(), head.bias.detach()
    times["trained"] = [
        timed(lambda: collapse_metrics(trained_features, train_labels, head_weight, head_bias), device)
        for _ in range(args.repeats)
    ]
    print_results(args, reference_n, times)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
