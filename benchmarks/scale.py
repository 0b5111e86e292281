"""Scale benchmark: lensworks analyses on randomly initialised models shaped like GPT-2-XL,
Pythia-1.4B and Llama-3-8B, built directly in bf16 on the target device.

Run:  .venv/bin/python benchmarks/scale.py [--device cuda] [--models gpt2-xl,pythia-1.4b,llama-3-8b]
          [--only composition,copying,behaviour,residual_stats,probe_inputs,analyse]
          [--deadline 420] [--json out/gpu_scale.json] [--tiny] [--cpu-weight-only]
          [--layers N] [--small-data]

For each model: wall time (device synchronised before and after; every analysis is first run
once on a tiny model of the same family, untimed; on the CPU all but analyse) and peak memory of
the random initialisation ("build") and of

  composition   composition_scores(model, mode) for Q, K and V (baseline_samples 20; the
                random baseline is cached per shape, so Q's time includes it and K's, V's not)
  copying       copying_scores(model, baseline=False)
  behaviour     circuits.heads.behaviour_scores: previous-token, duplicate-token and induction
                scores in one pass over repeated_tokens (32 sequences of 2 x 50 tokens)
  residual_stats  two data sets of 500 random-token prompts of 128 tokens
  probe_inputs  ridge probes for the input token, one layer (the middle one), resid_post,
                offset 0, no controls, 200 random-token prompts of 128 tokens
  analyse       report.analyse(model, n_prompts=8, prompt_len=64) (no tokenizer, so it reads
                repeated random tokens)

Peak memory on CUDA is torch.cuda.max_memory_allocated after reset_peak_memory_stats (weights
included; the note gives the part above what was resident before the step). On CPU it is the
process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs before each
step; when that is not possible, getrusage's lifetime maximum, flagged in the note).

Order: build + the quick analyses on every model, then report.analyse on every model (rebuilt
with the same seed: same weights; the rebuild is not timed), so that the deadline cuts the slow
analysis first.

Every step runs under try/except: an out-of-memory error is recorded as "OOM", any other
error by its first line. A global deadline (--deadline seconds from start) bounds the run:
a step still running at the deadline is interrupted ("timeout (deadline)") and later steps are
"skipped (deadline)". Rows are printed as they finish and the JSON is rewritten after every
row, so a run killed from outside still leaves its partial results.

--cpu-weight-only (opt-in; about 6 GB of RAM at full size in bf16, 10+ GB in fp32): the
GPT-2-XL shape built on the CPU, with the resident-set peak of the weight-only scores
(composition Q, copying); it runs last, under the same deadline.

--show PATH prints the table of an earlier run's JSON (also a partial one) and exits.

--layers N keeps every model's width, heads and vocabulary but only N layers, and --small-data
uses the --tiny data sizes with the real configs: together, a full-width rehearsal on the CPU
(e.g. the Llama-3-8B shape with 2 layers, 3 GB in bf16) of every code path at the real d_model,
GQA grouping and 128,256-token vocabulary.

--tiny shrinks every config (2 layers, d_model 64, 4 heads, d_head 16, d_mlp 128, d_vocab 1000,
n_ctx 256) and every data size, for a CPU dry run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

_T_START = time.monotonic()  # the deadline counts from here (imports included)

import torch  # noqa: E402

warnings.filterwarnings("ignore")

import transformer_lens  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from lensworks import report  # noqa: E402
from lensworks.circuits import composition_scores, copying_scores, repeated_tokens  # noqa: E402
from lensworks.circuits.heads import behaviour_scores  # noqa: E402
from lensworks.geometry import residual_stats  # noqa: E402
from lensworks.model import model_streams  # noqa: E402
from lensworks.probes import probe_inputs  # noqa: E402

GiB = 2**30

# Hand-written HookedTransformerConfig arguments in the shape of the real checkpoints (random
# weights; no tokenizer). Llama-3-8B's n_ctx 8192 is cut to 1024: TransformerLens allocates an
# n_ctx x n_ctx causal mask per layer.
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2-xl": dict(
        n_layers=48, d_model=1600, n_heads=25, d_head=64, d_mlp=6400, n_ctx=1024, d_vocab=50257,
        normalization_type="LN", act_fn="gelu_new", positional_embedding_type="standard", eps=1e-5,
        original_architecture="GPT2LMHeadModel",
    ),
    "pythia-1.4b": dict(
        n_layers=24, d_model=2048, n_heads=16, d_head=128, d_mlp=8192, n_ctx=2048, d_vocab=50304,
        normalization_type="LN", act_fn="gelu", parallel_attn_mlp=True, positional_embedding_type="rotary",
        rotary_dim=32, rotary_adjacent_pairs=False, eps=1e-5, default_prepend_bos=False,
        original_architecture="GPTNeoXForCausalLM",
    ),
    "llama-3-8b": dict(
        n_layers=32, d_model=4096, n_heads=32, n_key_value_heads=8, d_head=128, d_mlp=14336, n_ctx=1024,
        d_vocab=128256, normalization_type="RMS", act_fn="silu", gated_mlp=True, positional_embedding_type="rotary",
        rotary_dim=128, rotary_base=500000, final_rms=True, eps=1e-5, original_architecture="LlamaForCausalLM",
    ),
}

TINY = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=1000, n_ctx=256)
TINY_EXTRA = {"pythia-1.4b": dict(rotary_dim=4), "llama-3-8b": dict(n_key_value_heads=2, rotary_dim=16)}

ANALYSES = ("composition", "copying", "behaviour", "residual_stats", "probe_inputs", "analyse")

# data sizes: full, and --tiny (also used by the untimed warm-up)
FULL_SIZES = dict(baseline_samples=20, rep_seqs=32, rep_len=50, stats_prompts=500, stats_len=128,
                  probe_prompts=200, probe_len=128, analyse_prompts=8, analyse_len=64)
TINY_SIZES = dict(baseline_samples=20, rep_seqs=4, rep_len=10, stats_prompts=16, stats_len=32,
                  probe_prompts=16, probe_len=32, analyse_prompts=4, analyse_len=16)


#: --layers: the number of layers of every full-size config (None: the real depth)
LAYERS: int | None = None


def config(name: str, tiny: bool) -> dict[str, Any]:
    cfg = dict(CONFIGS[name])
    if tiny:
        cfg.update(TINY)
        cfg.update(TINY_EXTRA.get(name, {}))
    elif LAYERS is not None:
        cfg["n_layers"] = LAYERS
    return cfg


# --------------------------------------------------------------------------- measurement


class DeadlineExceeded(BaseException):
    """Raised by the timer inside a step that is still running at the deadline (a BaseException,
    so that no ``except Exception`` in library code swallows it)."""


def _on_alarm(signum, frame):  # pragma: no cover - timing dependent
    raise DeadlineExceeded()


@contextlib.contextmanager
def alarm(seconds: float):
    """Interrupt the body after ``seconds`` (main thread, Unix; otherwise no limit)."""
    usable = hasattr(signal, "setitimer") and sys.platform != "win32"
    if usable:
        try:
            old = signal.signal(signal.SIGALRM, _on_alarm)
        except ValueError:  # not the main thread
            usable = False
    if usable:
        signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield
    finally:
        if usable:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def _read_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


class Meter:
    """Peak memory of one step: CUDA allocator peak, or the process's resident-set high-water."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.device = device
        self.base = 0.0
        self.rss_reset = False

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / GiB
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (Linux >= 4.0)
            self.rss_reset = _read_hwm_kib() is not None
        except OSError:
            self.rss_reset = False
        self.base = self.rss_now()

    @staticmethod
    def rss_now() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GiB
        except (OSError, ValueError):
            return float("nan")

    def peak(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / GiB
        if self.rss_reset:
            return _read_hwm_kib() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def note(self, peak: float) -> str:
        if self.cuda:
            return f"+{peak - self.base:.2f} GiB over resident {self.base:.2f}"
        if self.rss_reset:
            return f"RSS peak, +{peak - self.base:.2f} GiB over resident {self.base:.2f}"
        return "RSS lifetime max (could not reset)"


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


class Runner:
    def __init__(self, args: argparse.Namespace, meta: dict[str, Any]):
        self.args = args
        self.meta = meta
        self.rows: list[dict[str, Any]] = []
        self.t0 = _T_START

    def remaining(self) -> float:
        return self.args.deadline - (time.monotonic() - self.t0)

    def record(self, model: str, analysis: str, seconds: float | None, peak: float | None, note: str) -> None:
        row = {"model": model, "analysis": analysis, "seconds": seconds, "peak_gib": peak, "note": note}
        self.rows.append(row)
        print(format_row(row), flush=True)
        self.write_json()

    def write_json(self) -> None:
        if not self.args.json:
            return
        path = self.args.json
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": self.meta, "elapsed_s": time.monotonic() - self.t0, "rows": self.rows}, f, indent=1)
        os.replace(tmp, path)

    def measure(self, device: str, model_name: str, analysis: str, fn: Callable[[], Any],
                describe: Callable[[Any], str] | None = None, model: Any = None) -> Any:
        """Time ``fn`` and record its peak memory; never raises (except KeyboardInterrupt)."""
        left = self.remaining()
        if left <= 0:
            self.record(model_name, analysis, None, None, "skipped (deadline)")
            return None
        meter = Meter(device)
        free_memory(device)
        meter.reset()
        meter.sync()
        t = time.perf_counter()
        out, note = None, ""
        try:
            with alarm(left):
                out = fn()
                meter.sync()
            note = meter.note(meter.peak())
            if describe is not None:
                try:
                    note = f"{describe(out)}; {note}"
                except Exception as e:  # noqa: BLE001 - the step itself succeeded
                    note = f"(describe failed: {first_line(e)}); {note}"
        except DeadlineExceeded:
            note = "timeout (deadline)"
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - a benchmark records every failure
            note = "OOM" if is_oom(e) else first_line(e)
        finally:
            if model is not None:
                with contextlib.suppress(Exception):
                    model.reset_hooks(including_permanent=False)
        with contextlib.suppress(BaseException):
            meter.sync()
        dt = time.perf_counter() - t
        peak = meter.peak()
        self.record(model_name, analysis, dt, peak, note)
        return out


def format_row(row: dict[str, Any]) -> str:
    s = "-" if row["seconds"] is None else f"{row['seconds']:.2f}"
    p = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
    return f"{row['model']:18s} {row['analysis']:30s} {s:>9s} {p:>9s}  {row['note']}"


def header() -> str:
    return f"{'model':18s} {'analysis':30s} {'seconds':>9s} {'peak GiB':>9s}  note"


# --------------------------------------------------------------------------- models and data


def build(name: str, device: str, dtype: torch.dtype, tiny: bool, seed: int) -> HookedTransformer:
    """A randomly initialised model, its parameters allocated and initialised on ``device``."""
    cfg = HookedTransformerConfig(**config(name, tiny), dtype=dtype, device=device, seed=seed, init_weights=True)
    # TransformerLens allocates parameters with the default device and moves the model afterwards;
    # making ``device`` the default allocates (and initialises) them there directly.
    with torch.device(device):
        model = HookedTransformer(cfg)
    model.eval()
    return model


def random_tokens(n: int, length: int, d_vocab: int, seed: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(d_vocab, (n, length), generator=gen).to(device)


def n_params(model: HookedTransformer) -> int:
    return sum(p.numel() for p in model.parameters())


def steps(model: HookedTransformer, sizes: dict[str, int], device: str, seed: int, only: set[str]):
    """(analysis label, function, describe) for every selected analysis."""
    cfg = model.cfg
    out: list[tuple[str, Callable[[], Any], Callable[[Any], str] | None]] = []
    if "composition" in only:
        for mode in "QKV":
            out.append((
                f"composition {mode}",
                lambda mode=mode: composition_scores(
                    model, mode, baseline_samples=sizes["baseline_samples"], progress=False),
                lambda r: f"max {float(r.scores.max()):.3f}",
            ))
    if "copying" in only:
        out.append(("copying", lambda: copying_scores(model, baseline=False),
                    lambda r: f"mean {float(r.scores.mean()):+.3f}"))
    if "behaviour" in only:
        def behaviour():
            toks = repeated_tokens(model, seq_len=sizes["rep_len"], n_seqs=sizes["rep_seqs"], seed=seed)
            return behaviour_scores(model, toks, offset=toks.shape[1] - 2 * sizes["rep_len"])

        out.append(("behaviour (3 scores, 1 pass)", behaviour,
                    lambda r: f"{r['induction'].options['n_seqs']}x{2 * r['induction'].options['seq_len']} tok"))
    if "residual_stats" in only:
        def stats():
            n, T = sizes["stats_prompts"], sizes["stats_len"]
            data = {"a": random_tokens(n, T, cfg.d_vocab, seed, device),
                    "b": random_tokens(n, T, cfg.d_vocab, seed + 1, device)}
            return residual_stats(model, data, streams=model_streams(model), progress=False)

        out.append(("residual_stats", stats,
                    lambda r: f"{sum(r.count.values())}x{sizes['stats_len']} tok, {len(r.streams)} streams"))
    if "probe_inputs" in only:
        mid = cfg.n_layers // 2

        def probe():
            toks = random_tokens(sizes["probe_prompts"], sizes["probe_len"], cfg.d_vocab, seed + 2, device)
            return probe_inputs(model, toks, layers=[mid], streams=("resid_post",), offsets=(0,),
                                controls=False, seed=seed, progress=False)

        out.append((f"probe_inputs (layer {mid})", probe,
                    lambda r: f"{len(r.classes)} classes, acc {float(r.accuracy.flatten()[0]):.3f}"))
    if "analyse" in only:
        out.append(("report.analyse", lambda: report.analyse(
            model, n_prompts=sizes["analyse_prompts"], prompt_len=sizes["analyse_len"], seed=seed, progress=False),
            lambda r: f"{sum(len(v) for v in r.values())} results"))
    return out


def warm_up(names: list[str], device: str, dtype: torch.dtype, only: set[str], seed: int) -> None:
    """Run every selected analysis once on a tiny model of each family (untimed): first kernel
    launches, cuBLAS/cuSOLVER handles, allocator growth, lazy imports."""
    for name in names:
        try:
            model = build(name, device, dtype, tiny=True, seed=seed)
        except Exception as e:  # noqa: BLE001 - the timed run records it
            print(f"  warm-up {name} build: {first_line(e)}", flush=True)
            continue
        for label, fn, _ in steps(model, TINY_SIZES, device, seed, only):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - the timed run records it
                print(f"  warm-up {name} {label}: {first_line(e)}", flush=True)
            model.reset_hooks(including_permanent=False)
        del model
        free_memory(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_model(runner: Runner, name: str, device: str, dtype: torch.dtype, sizes: dict[str, int],
              only: set[str], seed: int, tiny: bool, record_build: bool) -> None:
    """Build ``name`` and measure the analyses in ``only`` on it."""
    box: dict[str, HookedTransformer] = {}

    def do_build():
        box["model"] = build(name, device, dtype, tiny, seed)
        return box["model"]

    if record_build:
        runner.measure(device, name, "build (random init)", do_build,
                       lambda m: f"{n_params(m) / 1e6:,.1f}M params, {str(m.cfg.dtype).replace('torch.', '')}")
    elif runner.remaining() > 0:
        try:
            with alarm(runner.remaining()):
                do_build()
        except DeadlineExceeded:
            pass
        except Exception as e:  # noqa: BLE001
            runner.record(name, "build (again)", None, None, "OOM" if is_oom(e) else first_line(e))
            free_memory(device)
            return
    model = box.pop("model", None)
    if model is None:
        note = "skipped (deadline)" if runner.remaining() <= 0 else "skipped (no model)"
        runner.record(name, "report.analyse" if only == {"analyse"} else "all analyses", None, None, note)
        free_memory(device)
        return
    for label, fn, describe in steps(model, sizes, device, seed, only):
        runner.measure(device, name, label, fn, describe, model=model)
    del model
    free_memory(device)


def run_cpu_weight_only(runner: Runner, dtype: torch.dtype, sizes: dict[str, int], tiny: bool, seed: int) -> None:
    """GPT-2-XL shape on the CPU: resident-set peak of the weight-only scores."""
    name, device = "gpt2-xl (cpu)", "cpu"
    box: dict[str, HookedTransformer] = {}

    def do_build():
        box["model"] = build("gpt2-xl", device, dtype, tiny, seed)
        return box["model"]

    runner.measure(device, name, "build (random init)", do_build,
                   lambda m: f"{n_params(m) / 1e6:,.1f}M params, {str(m.cfg.dtype).replace('torch.', '')}")
    model = box.pop("model", None)
    if model is None:
        return
    runner.measure(device, name, "composition Q (weights)", lambda: composition_scores(
        model, "Q", baseline_samples=sizes["baseline_samples"], progress=False),
        lambda r: f"max {float(r.scores.max()):.3f}", model=model)
    runner.measure(device, name, "copying (weights)", lambda: copying_scores(model, baseline=False),
                   lambda r: f"mean {float(r.scores.mean()):+.3f}", model=model)
    model = None  # the lambdas above hold the name, not the model
    free_memory(device)


# --------------------------------------------------------------------------- main


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: unknown {bad or value!r}; choose from {','.join(allowed)}")
    return items


def print_table(meta: dict[str, Any], rows: list[dict[str, Any]], elapsed: float | None) -> None:
    gpu = f" ({meta['gpu']})" if meta.get("gpu") else ""
    total = "" if elapsed is None else f", total {elapsed:.1f} s"
    print(f"scale benchmark, device {meta.get('device')}{gpu}, dtype {meta.get('dtype')}"
          f"{', TINY configs' if meta.get('tiny') else ''}"
          f"{', ' + str(meta['layers']) + ' layers' if meta.get('layers') else ''}"
          f"{', small data' if meta.get('small_data') else ''}{total}")
    print(f"{'model':18s} | {'analysis':30s} | {'seconds':>8s} | {'peak GiB':>8s} | note")
    print("-" * 110)
    for r in rows:
        s = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        p = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{r['model']:18s} | {r['analysis']:30s} | {s:>8s} | {p:>8s} | {r['note']}")


def show(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    print_table(data.get("meta", {}), data.get("rows", []), data.get("elapsed_s"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default=",".join(CONFIGS), help=f"comma separated subset of {','.join(CONFIGS)}, or none")
    ap.add_argument("--only", default=",".join(ANALYSES), help=f"comma separated subset of {','.join(ANALYSES)}")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="shrink every config and data size (CPU dry run)")
    ap.add_argument("--deadline", type=float, default=420.0,
                    help="seconds from start after which running steps are interrupted and later ones skipped")
    ap.add_argument("--json", default=None, help="write the table (and machine details) here as JSON")
    ap.add_argument("--cpu-weight-only", action="store_true",
                    help="also build the GPT-2-XL shape on the CPU and record the RSS peak of composition Q "
                         "and copying (needs ~6 GB RAM in bf16 at full size)")
    ap.add_argument("--cpu-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="dtype of the --cpu-weight-only model")
    ap.add_argument("--layers", type=int, default=None,
                    help="keep only this many layers of every full-size config (a full-width CPU rehearsal)")
    ap.add_argument("--small-data", action="store_true", help="the --tiny data sizes with the real configs")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed tiny warm-up")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 with --tiny on the CPU, where a "
                         "shared machine makes multi-threaded tiny ops much slower)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", metavar="PATH", default=None, help="print the table of an earlier run's JSON and exit")
    args = ap.parse_args()
    if args.show:
        show(args.show)
        return

    # "--models none" with --cpu-weight-only measures only the CPU weight-only scores
    names = [] if args.models.strip() == "none" else parse_list(args.models, tuple(CONFIGS), "models")
    only = set(parse_list(args.only, ANALYSES, "only"))
    dtype = getattr(torch, args.dtype)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    sizes = TINY_SIZES if args.tiny or args.small_data else FULL_SIZES
    if args.layers is not None:
        if args.layers < 1:
            raise SystemExit(f"--layers must be >= 1, got {args.layers}")
        global LAYERS
        LAYERS = args.layers
    if args.threads is None and args.tiny and device == "cpu":
        args.threads = 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    meta: dict[str, Any] = {
        "device": device, "machine": platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "transformer_lens": getattr(transformer_lens, "__version__", None),
        "torch_threads": torch.get_num_threads(), "dtype": args.dtype, "tiny": args.tiny,
        "layers": args.layers, "small_data": args.small_data,
        "models": names, "analyses": sorted(only), "sizes": sizes, "deadline_s": args.deadline, "argv": sys.argv[1:],
    }
    import importlib.metadata as md

    for dist in ("transformer_lens", "transformers", "lensworks"):
        with contextlib.suppress(Exception):
            meta[dist] = md.version(dist)
    meta["lensworks_path"] = os.path.dirname(os.path.abspath(report.__file__))
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        meta["gpu"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
        meta["gpu_memory_gib"] = round(props.total_memory / GiB, 1)
    print(f"machine: {meta['machine']}, {meta['torch_threads']} torch threads, device {device}"
          f"{' (' + meta['gpu'] + ')' if 'gpu' in meta else ''}, torch {torch.__version__}, "
          f"transformer_lens {meta['transformer_lens']}, dtype {args.dtype}{', TINY configs' if args.tiny else ''}",
          flush=True)

    runner = Runner(args, meta)
    if not args.no_warmup:
        t = time.perf_counter()
        # on the CPU there are no kernels to warm: the tiny analyse (the slow one) is left out
        try:
            with alarm(runner.remaining()):
                warm_up(names, device, dtype, only if device != "cpu" else only - {"analyse"}, args.seed)
        except DeadlineExceeded:
            print("warm-up interrupted by the deadline", flush=True)
        meta["warmup_s"] = round(time.perf_counter() - t, 2)
        print(f"warm-up (tiny models, untimed): {meta['warmup_s']:.1f} s", flush=True)
    print("\n" + header(), flush=True)
    # the quick analyses on every model first; report.analyse (the slow one) after them, on the
    # same models rebuilt (same seed, so the same weights), so that the deadline cuts it first
    for name in names:
        run_model(runner, name, device, dtype, sizes, only - {"analyse"}, args.seed, args.tiny, record_build=True)
    if "analyse" in only:
        for name in names:
            run_model(runner, name, device, dtype, sizes, {"analyse"}, args.seed, args.tiny, record_build=False)
    if args.cpu_weight_only:
        run_cpu_weight_only(runner, getattr(torch, args.cpu_dtype), sizes, args.tiny, args.seed)

    runner.write_json()
    print()
    print_table(meta, runner.rows, time.monotonic() - runner.t0)
    if args.json:
        print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
