"""Streaming collapse statistics at scale: time, peak memory and agreement, every ratio measured in this run.

Cases (`--case`, default `inmemory,rhubarbwu,imagenet,vocab`):

- `inmemory`: 60,000 × 512 float32 features, K = 10. The streaming accumulator fed 512-row batches in two passes
  (as the monitor feeds it a loader) against the previous in-memory implementation, `collapse_metrics` as of
  commit BASELINE_COMMIT (read with `git show`, so the comparison needs the repository's history), interleaved,
  7 repeats each; and the largest relative difference of the 11 metrics. Goal: ratio ≤ 1.2.
- `rhubarbwu`: the same stream through rhubarbwu/neural-collapse's accumulators (MeanAccumulator, then
  CovarAccumulator + VarNormAccumulator + DecAccumulator; float64; a bias-free classifier, as their NC4 has no
  bias) when `--rhubarbwu DIR` names a copy of that repository; time of their two passes plus their measures
  against ours, and the metrics both compute: NC1 (their "quotient"), Papyan's NC1 (their "pinv"), CDNV
  (theirs × K(K−1) = our `ncc`, see docs/library.md) and NC4 (1 − their agreement).
- `imagenet`: an ImageNet-1k-sized stream, N = 1,281,167, d = 2048, K = 1000, generated chunk by chunk from seeded
  generators (the second pass regenerates the same chunks; nothing is held). Reported: the accumulator's time
  (generation excluded), its floor — the FLOPs of its dominant products over this machine's float64 matmul rate,
  measured now on one product of the same shapes — and the ratio (goal ≤ 1.5), and the process's peak RSS (goal
  ≤ 2 GiB, torch included).
- `sync` (CUDA only): both passes over 20 batches under `torch.cuda.set_sync_debug_mode("error")`, so that any
  host synchronisation inside `CollapseStatistics.update` raises; reports "no host sync per batch" or the error.
- `vocab`: K = 32,000 classes, d = 1024, N = `--vocab-samples` (1,000,000 for the issue's size; the default is
  smaller on a CPU, see docs/performance.md): peak RSS, time, and time per million samples.

Usage: python benchmarks/bench_streaming.py [--case imagenet,vocab] [--device cuda] [--rhubarbwu DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ncflow.collapse.metrics import METRIC_NAMES, collapse_metrics
from ncflow.collapse.statistics import CollapseStatistics

BASELINE_COMMIT = "30dd465"  # the last commit whose collapse_metrics held every feature in memory
IMAGENET = (1_281_167, 2048, 1000)
VOCAB = (32_000, 1024)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clustered(n: int, d: int, k: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(k, d, generator=generator, device=device)
    labels = torch.randint(0, k, (n,), generator=generator, device=device)
    labels[:k] = torch.arange(k, device=device)
    features = centres[labels] + 0.5 * torch.randn(n, d, generator=generator, device=device)
    return features, labels


def streamed(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             batch: int = 512) -> dict[str, float]:
    stats = CollapseStatistics(weight.shape[0], weight, bias)
    for start in range(0, len(labels), batch):
        stats.update(features[start:start + batch], labels[start:start + batch])
    stats.start_second_pass()
    for start in range(0, len(labels), batch):
        stats.update(features[start:start + batch], labels[start:start + batch])
    return stats.compute()


def baseline_module() -> Any | None:
    """`ncflow.collapse.metrics` as of BASELINE_COMMIT, or None without the repository's history."""
    try:
        source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:ncflow/collapse/metrics.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "metrics_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("metrics_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(call: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - started


def largest_difference(found: dict[str, float], expected: dict[str, float]) -> float:
    return max(abs(found[name] - expected[name]) / max(abs(expected[name]), 1e-300) for name in METRIC_NAMES)


def case_inmemory(device: torch.device, repeats: int = 7) -> dict[str, Any]:
    features, labels = clustered(60_000, 512, 10, 0, device)
    weight, bias = torch.randn(10, 512, device=device), torch.randn(10, device=device)
    baseline = baseline_module()
    times: dict[str, list[float]] = {"streaming (512-row batches)": [], "collapse_metrics (whole matrix)": []}
    calls = {"streaming (512-row batches)": lambda: streamed(features, labels, weight, bias),
             "collapse_metrics (whole matrix)": lambda: collapse_metrics(features, labels, weight, bias)}
    if baseline is not None:
        name = f"previous in-memory path ({BASELINE_COMMIT})"
        times[name] = []
        calls[name] = lambda: baseline.collapse_metrics(features, labels, weight, bias)
    for call in calls.values():
        call()  # warm-up
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timed(call, device))
    result: dict[str, Any] = {"case": "inmemory", "shape": "60000x512, K=10",
                              "median_s": {name: statistics.median(values) for name, values in times.items()}}
    if baseline is not None:
        reference = baseline.collapse_metrics(features, labels, weight, bias)
        result["max_rel_diff_vs_previous"] = largest_difference(streamed(features, labels, weight, bias), reference)
        result["ratio_streaming_vs_previous"] = (result["median_s"]["streaming (512-row batches)"]
                                                 / result["median_s"][f"previous in-memory path ({BASELINE_COMMIT})"])
    return result


def case_rhubarbwu(device: torch.device, folder: Path | None) -> dict[str, Any]:
    if folder is None:
        return {"case": "rhubarbwu", "skipped": "no --rhubarbwu DIR given"}
    sys.path.insert(0, str(folder))
    from neural_collapse.accumulate import CovarAccumulator, DecAccumulator, MeanAccumulator, VarNormAccumulator
    from neural_collapse.measure import clf_ncc_agreement, covariance_ratio, variability_cdnv

    n, d, k, batch = 60_000, 512, 10, 512
    features, labels = clustered(n, d, k, 0, device)
    weight = torch.randn(k, d, device=device)

    def theirs() -> dict[str, float]:
        means_accumulator = MeanAccumulator(k, d, device, torch.float64)
        for start in range(0, n, batch):
            means_accumulator.accumulate(features[start:start + batch], labels[start:start + batch])
        means, global_mean = means_accumulator.compute()
        covariance = CovarAccumulator(k, d, device, torch.float64, M=means)
        variances = VarNormAccumulator(k, d, device, torch.float64, M=means)
        decisions = DecAccumulator(k, d, device, torch.float64, M=means, W=weight)
        for start in range(0, n, batch):
            x, y = features[start:start + batch], labels[start:start + batch]
            covariance.accumulate(x, y, means)
            variances.accumulate(x, y, means)
            decisions.accumulate(x, y, weight, means)
        within = covariance.compute()
        return {"nc1": covariance_ratio(within, means, global_mean, "quotient"),
                "nc1_pinv": covariance_ratio(within, means, global_mean, "pinv"),
                "ncc": variability_cdnv(variances.compute()[0], means) * k * (k - 1),
                "nc4": 1.0 - clf_ncc_agreement(decisions)}

    ours = partial(streamed, features, labels, weight, None, batch)
    theirs(), ours()
    times: dict[str, list[float]] = {"ncflow": [], "rhubarbwu": []}
    for _ in range(5):
        times["ncflow"].append(timed(ours, device))
        times["rhubarbwu"].append(timed(theirs, device))
    found, reference = ours(), theirs()
    return {"case": "rhubarbwu", "shape": f"{n}x{d}, K={k}, {batch}-row batches, float64 on both sides",
            "median_s": {name: statistics.median(values) for name, values in times.items()},
            "ratio_rhubarbwu_vs_ncflow": statistics.median(times["rhubarbwu"]) / statistics.median(times["ncflow"]),
            "values": {name: {"ncflow": found[name], "rhubarbwu": reference[name],
                              "rel_diff": abs(found[name] - reference[name]) / max(abs(found[name]), 1e-300)}
                       for name in reference}}


def generated_chunks(n: int, d: int, k: int, chunk: int, device: torch.device):
    """The same stream on every call: chunk i's noise from generator seed i (class centres from seed 10⁹); sample j
    has class (7919 · j) mod k, so every class has a sample once n ≥ k (7919 is a prime, coprime to k here)."""
    centres = torch.randn(k, d, generator=torch.Generator(device=device).manual_seed(10**9), device=device)
    for index, start in enumerate(range(0, n, chunk)):
        rows = min(chunk, n - start)
        generator = torch.Generator(device=device).manual_seed(index)
        labels = (torch.arange(start, start + rows, device=device) * 7919) % k
        yield centres[labels] + torch.randn(rows, d, generator=generator, device=device), labels


def matmul_rate(rows: int, inner: int, cols: int, device: torch.device) -> float:
    """float64 FLOP/s of one rows×inner @ inner×cols product on this machine now (best of 3)."""
    a = torch.randn(rows, inner, dtype=torch.float64, device=device)
    b = torch.randn(inner, cols, dtype=torch.float64, device=device)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(3))
    return 2.0 * rows * inner * cols / best


def streaming_at_scale(n: int, d: int, k: int, device: torch.device, chunk: int = 8192) -> dict[str, Any]:
    """Two passes over a generated stream; the accumulator's time only (generation excluded)."""
    weight = torch.randn(k, d, device=device) / math.sqrt(d)
    bias = torch.zeros(k, device=device)
    stats = CollapseStatistics(k, weight, bias)
    accumulate = 0.0
    started = time.perf_counter()
    for pass_number in range(2):
        if pass_number == 1:
            stats.start_second_pass()
        for features, labels in generated_chunks(n, d, k, chunk, device):
            accumulate += timed(partial(stats.update, features, labels), device)
    finishing = timed(lambda: stats.compute(), device)
    return {"accumulate_s": accumulate, "compute_s": finishing, "wall_s": time.perf_counter() - started,
            "peak_rss_gib": peak_rss_gib()}


def case_imagenet(device: torch.device) -> dict[str, Any]:
    n, d, k = IMAGENET
    flops = {  # the dominant products, as CollapseStatistics forms them (docs/performance.md)
        "pass 2: logits and nearest-mean scores, N×d @ d×2K": 2.0 * n * d * 2 * k,
        "pass 2: flatness, probabilities N×K @ K×K": 2.0 * n * k * k,
        "pass 2: Papyan's NC1, deviations N×d @ d×(K−1)": 2.0 * n * d * (k - 1),
    }
    rate = matmul_rate(4096, d, 2 * k, device)
    found = streaming_at_scale(n, d, k, device)
    floor = sum(flops.values()) / rate
    return {"case": "imagenet", "shape": f"N={n}, d={d}, K={k}", **found, "floor_flops": flops,
            "float64_matmul_flops_per_s": rate, "floor_s": floor,
            "ratio_vs_floor": (found["accumulate_s"] + found["compute_s"]) / floor}


def case_vocab(device: torch.device, samples: int) -> dict[str, Any]:
    k, d = VOCAB
    if samples < k:
        raise SystemExit(f"--vocab-samples: need at least K = {k} samples (one per class), got {samples}")
    found = streaming_at_scale(samples, d, k, device, chunk=2048)
    per_million = (found["accumulate_s"] + found["compute_s"]) * 1e6 / samples
    return {"case": "vocab", "shape": f"N={samples}, d={d}, K={k}", **found, "s_per_million_samples": per_million}


def case_sync(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"case": "sync", "skipped": "needs a CUDA device"}
    features, labels = clustered(20 * 512, 512, 100, 0, device)
    weight = torch.randn(100, 512, device=device)
    stats = CollapseStatistics(100, weight, torch.zeros(100, device=device))
    torch.cuda.synchronize(device)
    try:
        torch.cuda.set_sync_debug_mode("error")
        for pass_number in range(2):
            if pass_number == 1:
                torch.cuda.set_sync_debug_mode("default")
                stats.start_second_pass()  # (once per pass: the SVD of the class means may sync)
                torch.cuda.set_sync_debug_mode("error")
            for start in range(0, len(labels), 512):
                stats.update(features[start:start + 512], labels[start:start + 512])
        verdict = "no host sync per batch"
    except RuntimeError as error:
        verdict = f"a batch synchronised: {str(error).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {"case": "sync", "result": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="inmemory,rhubarbwu,imagenet,vocab,sync")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rhubarbwu", type=Path, default=None, help="a copy of rhubarbwu/neural-collapse")
    parser.add_argument("--vocab-samples", type=int, default=64_000, help="N of the vocab case (at least K = 32,000)")
    parser.add_argument("--json", type=Path, default=None, help="append each case's result as a JSON line")
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = {"inmemory": lambda: case_inmemory(device), "rhubarbwu": lambda: case_rhubarbwu(device, args.rhubarbwu),
             "imagenet": lambda: case_imagenet(device), "vocab": lambda: case_vocab(device, args.vocab_samples),
             "sync": lambda: case_sync(device)}
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.case.split(","):
        result = cases[name]()
        print(json.dumps(result, indent=1))
        if args.json:
            with args.json.open("a") as out:
                out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
