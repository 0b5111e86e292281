"""Peak memory of loading a sharded bf16 Hugging Face checkpoint of a 1.5B-parameter Llama shape:
lensworks' lazy reading (``safe_open``, tensor by tensor, cast as read) beside the eager reading it
replaced (``safetensors.torch.load_file`` of every shard, then a cast of the whole dict, then
conversion) and beside transformers' own ``from_pretrained``, in the same run.

Run:  .venv/bin/python benchmarks/bench_load_memory.py [--layers 24] [--modes read-lazy,read-eager,...]
      (under .venv-tl4 the ``load-*`` modes measure the TransformerLens 4 bridge)

The checkpoint (Llama layout: d_model 2048, 16 heads, d_mlp 6144, vocabulary 50,304, untied head;
24 layers = 1.51 B parameters, 3.0 GB in bf16) is written once from random tensors straight into
safetensors shards of at most 2 GB plus ``model.safetensors.index.json``, ``config.json`` and a
small word-level tokenizer (the Hugging Face model is never built), and kept in ``--cache`` (default
/tmp/lensworks-bench-load-memory) for the next run. Each mode runs in a fresh Python process;
peak memory is the process's own high-water mark ``VmHWM`` (what ``ru_maxrss`` reports), with
the mark after the imports beside it, and the largest anonymous / file-backed resident sizes a
sampling thread saw (every 5 ms): pages of a memory-mapped file count towards RSS but are page
cache the kernel can drop.

Modes:

- ``read-lazy``: lensworks' reading and conversion only (``_hf.read_converted``): the state
  dict in TransformerLens's layout, every tensor then summed so that all of it is in memory.
- ``read-eager``: the same with the code before lazy reading (``load_file`` per shard, merged,
  ``{k: v.to(dtype)}``, conversion), every tensor summed likewise.
- ``load-lazy`` / ``load-eager``: the whole ``lensworks.load_model(dir, dtype=torch.bfloat16)`` (``--dtype``)
  (TransformerLens 3: fold RMSNorm, centre the unembedding, fold value biases), with the new
  reading, and with ``HookedBackend.build_from_hf`` as it was before. The mark right after
  reading + conversion is printed too, so what TransformerLens's weight processing adds is
  visible. Add ``-raw`` (``load-lazy-raw``) for ``fold_ln=False, center_writing_weights=False,
  center_unembed=False``.
- ``hf``: ``AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16)``, the reference,
  every parameter then summed (transformers may leave them as mapped file pages until used).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, threading, time, warnings
warnings.filterwarnings("ignore")
import torch
mode, path = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(sys.argv[3]))
dtype = getattr(torch, sys.argv[4])
from pathlib import Path
path = Path(path)


def status():
    out = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 2**20  # GiB
    return out


peaks = {"RssAnon": 0.0, "RssFile": 0.0}
stop = threading.Event()


def sample():
    while not stop.is_set():
        s = status()
        for k in peaks:
            peaks[k] = max(peaks[k], s.get(k, 0.0))
        time.sleep(0.005)


def touch(sd):  # every byte in memory (a lazily mapped tensor is read here)
    return sum(float(v.float().sum()) if v.numel() < 2**22 else sum(float(c.float().sum()) for c in v.flatten().split(2**22))
               for v in sd.values() if v.is_floating_point())


def eager_read_converted(path, spec, raw, cfg, *, dtype):
    # the reading before lazy weights: load_file of every *.safetensors, the dict cast, then converted
    from safetensors.torch import load_file
    from lensworks.model import _files, _hf
    sd = {}
    for f in sorted(path.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    _hf.check_layer_count(sd, int(cfg.n_layers), str(path / "config.json"))
    _files.check_floating(sd, str(path))
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return sd, _hf.convert_weights(spec, raw, sd, cfg, where=str(path))


if mode != "hf":
    import lensworks
    from lensworks.model import _hf
    from lensworks.model._backend import backend
    from lensworks.model._tlconfig import make_cfg
    from transformers import AutoModelForCausalLM  # imported by every mode alike
else:
    from transformers import AutoModelForCausalLM
    import transformer_lens  # noqa: F401  (the same imports as the other modes)
after_imports = status()["VmHWM"]
threading.Thread(target=sample, daemon=True).start()
marks = {}
t0 = time.perf_counter()
if mode in ("read-lazy", "read-eager"):
    spec, raw = _hf.read_config(path)
    fields = _hf.config_fields(spec, raw, where=str(path / "config.json"))
    cfg = make_cfg({**fields, "dtype": dtype, "device": "cpu", "init_weights": False}, where=str(path))
    if mode == "read-lazy":
        sd = _hf.read_converted(path, spec, raw, cfg, dtype=dtype)
    else:
        held, sd = eager_read_converted(path, spec, raw, cfg, dtype=dtype)
    checksum = touch(sd)
    n = sum(v.numel() for v in sd.values())
elif mode.startswith("load-"):
    raw_flags = mode.endswith("-raw")
    eager = mode.startswith("load-eager")
    if backend().line == 3:
        from lensworks.model import _hooked
        from lensworks.model._compat import quiet
        from lensworks.model._core import HookedTransformer

        if eager:  # HookedBackend.build_from_hf as it was before lazy reading
            def build_from_hf(self, path, spec, raw, fields, *, tokenizer, dtype, device, processing):
                where = str(path)
                cfg = make_cfg({**fields, "dtype": dtype, "device": "cpu", "init_weights": False}, where=where)
                sd, converted = eager_read_converted(path, spec, raw, cfg, dtype=dtype)
                marks["after_read_convert_gib"] = status()["VmHWM"]
                with quiet():
                    model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
                _hf.check_shapes(converted, {k: tuple(v.shape) for k, v in model.state_dict().items()}, where=where)
                with quiet():
                    model.load_and_process_state_dict(converted, fold_value_biases=True, **processing)
                return _hooked.finish(model, device)

            _hooked.HookedBackend.build_from_hf = build_from_hf
        else:
            real = _hf.read_converted

            def read_converted(*a, **k):
                out = real(*a, **k)
                marks["after_read_convert_gib"] = status()["VmHWM"]
                return out

            _hf.read_converted = read_converted
    elif eager:
        raise SystemExit("load-eager is TransformerLens 3 only (under 4 transformers reads the weights)")
    flags = dict(fold_ln=False, center_writing_weights=False, center_unembed=False) if raw_flags else {}
    model = lensworks.load_model(path, dtype=dtype, **flags)
    n = sum(p.numel() for p in model.parameters())
    checksum = None
elif mode == "hf":
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    n = sum(p.numel() for p in model.parameters())
    checksum = touch(model.state_dict())  # its parameters may be mapped file pages, read only when used
else:
    raise SystemExit(f"unknown mode {mode}")
seconds = time.perf_counter() - t0
stop.set()
end = status()
print(json.dumps({"seconds": seconds, "peak_gib": end["VmHWM"], "after_imports_gib": after_imports,
                  "anon_peak_gib": peaks["RssAnon"], "file_peak_gib": peaks["RssFile"], "params": n, **marks}))
"""

SHAPE = dict(d_model=2048, n_heads=16, d_mlp=6144, vocab=50304)


def write_checkpoint(path: Path, layers: int, shard_bytes: int) -> None:
    """Random bf16 Llama tensors written shard by shard (one shard in memory at a time)."""
    import torch
    from safetensors.torch import save_file

    d, f, v = SHAPE["d_model"], SHAPE["d_mlp"], SHAPE["vocab"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, d))]
    for l in range(layers):
        p = f"model.layers.{l}."
        shapes += [(p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
        shapes += [(p + f"self_attn.{n}_proj.weight", (d, d)) for n in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)), (p + "mlp.down_proj.weight", (d, f))]
    shapes += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:  # next fit, in order, as save_pretrained does
        nbytes = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    g = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    path.mkdir(parents=True, exist_ok=True)
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        part = {}
        for name, shape in group:
            base = 1.0 if len(shape) == 1 else 0.0
            part[name] = (base + 0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)
            weight_map[name] = fname
            total += part[name].numel() * 2
        save_file(part, str(path / fname), metadata={"format": "pt"})
        del part
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}, indent=2))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d, "intermediate_size": f,
              "num_hidden_layers": layers, "num_attention_heads": SHAPE["n_heads"],
              "num_key_value_heads": SHAPE["n_heads"], "vocab_size": v, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
              "eos_token_id": 2}
    write_tokenizer(path)  # TransformerLens 4 boots a local directory only with a tokenizer in it
    (path / "config.json").write_text(json.dumps(config, indent=2))  # written last: marks a complete checkpoint


def write_tokenizer(path: Path) -> None:
    """A small word-level tokenizer (ids below the vocabulary size; its size does not matter here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def run(mode: str, path: Path, threads: int, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(threads), dtype], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        return {"error": (out.stderr or out.stdout)[-600:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--shard-gb", type=float, default=2.0, help="largest shard, in 10^9 bytes")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lensworks-bench-load-memory"))
    ap.add_argument("--modes", default="read-lazy,read-eager,hf,load-lazy,load-eager")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="dtype to load in (the files are bf16; float32 shows the cost of casting)")
    args = ap.parse_args()
    path = args.cache / f"llama-{args.layers}l-bf16"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM")
    if not (path / "config.json").is_file():
        free = shutil.disk_usage(args.cache.parent if not args.cache.exists() else args.cache).free
        need = 2 * (2 * SHAPE["vocab"] * SHAPE["d_model"] + args.layers * (4 * SHAPE["d_model"] ** 2 + 3 * SHAPE["d_model"] * SHAPE["d_mlp"]))
        if need * 1.2 > free:
            raise SystemExit(f"not enough disk in {args.cache}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free; "
                             "pass fewer --layers")
        t0 = time.perf_counter()
        write_checkpoint(path, args.layers, int(args.shard_gb * 1e9))
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    files = sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    print(f"checkpoint: {path}: Llama, {args.layers} layers, d_model {SHAPE['d_model']}, d_mlp {SHAPE['d_mlp']}, "
          f"vocabulary {SHAPE['vocab']}, bf16, {len(files)} shards, {size / 2**30:.2f} GiB ({size / 1e9:.2f} GB)")
    print(f"loaded as {args.dtype}")
    print(f"\n{'mode':<16} {'seconds':>8} {'peak GiB':>9} {'imports':>8} {'added':>7} {'added/files':>11} "
          f"{'anon max':>9} {'file max':>9} {'after read':>10}")
    for mode in args.modes.split(","):
        r = run(mode, path, args.threads, args.dtype)
        if "error" in r:
            print(f"{mode:<16} failed: {r['error']}")
            continue
        added = r["peak_gib"] - r["after_imports_gib"]
        mark = r.get("after_read_convert_gib")
        print(f"{mode:<16} {r['seconds']:>8.1f} {r['peak_gib']:>9.2f} {r['after_imports_gib']:>8.2f} {added:>7.2f} "
              f"{added / (size / 2**30):>11.2f} {r['anon_peak_gib']:>9.2f} {r['file_peak_gib']:>9.2f} "
              f"{'' if mark is None else f'{mark:.2f}':>10}", flush=True)
    print("\npeak: VmHWM; imports: VmHWM before loading; added: peak - imports; after read: VmHWM right after "
          "reading + conversion (load modes, TransformerLens 3)")


if __name__ == "__main__":
    main()
