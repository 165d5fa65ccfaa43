"""Scan throughput: tokens/s and peak memory of a scan's forward pass, three ways, on the same
model and the same batches.

- `plain`: the model's forward without statistics (the floor; what inference costs).
- `hooks`: the reference user code. Forward hooks on every MLP's activation module count
  `act > 0` per language in PyTorch, as researchers do today (LAPE's vLLM code adds
  `(activation > 0).sum(dim=(0, 1))` per layer for the one language of a run; with batches that
  mix languages each language's rows are picked with a mask). See `HookCounting`.
- `patch:<impl>`: `ln.patch(model, impl=...)` counting the same K languages with the fused op,
  once per available implementation.
- `patch:<impl>+hist`: the same with histograms of B bins and maxima (`scan --hist B`), when
  asked for (`hist_bins`); its counts are checked like the others'.

The forward is the one `ln.scan` runs (the base model without the LM head, `use_cache=False`,
under `torch.inference_mode`), and each timed block is one pass over the same pre-tokenised
batches, including the per-batch `set_rows` (or the hook code's per-batch masks). Rounds run
one block of every variant in an order rotated from round to round, so drift and other
processes' load hit all variants alike; ratios are taken per round (paired) and their median
is reported. Before the timed rounds each variant makes one pass from fresh buffers: it warms
up, gives the peak memory, and its counts are compared with the hook code's. Layer 0 sees the
same input in both, so its counts must be equal, entry for entry (else `BenchError`: the
comparison would be void). Deeper layers are equal too when the implementation computes h
bit for bit like the unpatched model (`torch`, and `cpu` for SiLU); otherwise (e.g. the `cpu`
kernel's GELU differs from torch's in the last bit) rounding differences in h propagate and a
handful of counts near zero flip: their number is reported (`counts_differing`), and more than
one entry in a thousand is an error.
"""
from __future__ import annotations

import datetime
import gc
import os
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..corpus.batching import Batch

TOY_MODEL = "toy"                 # a tiny random Llama with a byte tokenizer: tests and CI
# Handbook languages used for the text of the batches, first K of them (all have > 100k tokens).
TEXT_LANGUAGES = ("en", "fr", "de", "es", "it", "pt-br", "ja", "ru")
DEFAULT_LANGUAGES = 8

CSV_FIELDS = ["run_id", "experiment", "machine", "device_name", "torch_version", "threads",
              "load_avg_start", "load_avg_end", "model", "params_m", "layers", "intermediate",
              "dtype", "device", "text", "batch", "seq_len", "n_batches", "K", "variant",
              "rounds", "tokens", "tokens_per_s", "tokens_per_s_iqr", "tokens_per_s_min",
              "tokens_per_s_max", "ratio_vs_plain", "ratio_vs_plain_iqr", "ratio_vs_hooks",
              "ratio_vs_hooks_iqr", "cpu_ratio_vs_plain", "cpu_ratio_vs_hooks", "peak_mem_mb",
              "peak_rss_mb", "counts_differing"]
# Deeper layers' counts may differ from the hook code's through rounding of h (see above). In
# float32, more differing entries than this fraction means a real disagreement; in bfloat16 and
# float16 the patch rounds act(gate) * up once where the model rounds twice, so deeper layers
# see visibly different inputs and only layer 0 is compared (7 % of a toy model's deeper counts
# differed in bfloat16).
MAX_DIFFERING_FP32 = 1e-3


class BenchError(ValueError):
    """A benchmark that cannot run or whose result would be void; the message says why."""


# ---- model and batches ------------------------------------------------------------------------
def toy_model(dtype: torch.dtype = torch.float32):
    """(model, tokenizer): a 2-layer random Llama (hidden 64, 256 neurons) over bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..models.toy import BYTE_VOCAB_SIZE, byte_tokenizer

    config = LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=BYTE_VOCAB_SIZE, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.config._name_or_path = TOY_MODEL
    return model, byte_tokenizer()


def load_bench_model(name: str, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer): `toy`, a built-in name (gemma-3-270m, smollm2-135m) or a folder/id."""
    if name == TOY_MODEL:
        model, tokenizer = toy_model(dtype)
        return model.to(device), tokenizer
    from ..models.loading import load_model
    return load_model(name, dtype=dtype, device=device, progress=False)


def make_batches(tokenizer, vocab_size: int, *, batch_size: int, seq_len: int, n_batches: int,
                 languages: int, device: torch.device | str = "cpu",
                 text: bool = True) -> Tuple[List[Batch], str]:
    """`n_batches` full [batch_size, seq_len] batches and a description of their text.

    Text: the Debian handbook in the first min(K, 8) of TEXT_LANGUAGES, packed as `ln.scan`
    packs it (`corpus.iter_batches`); with more than 8 language slots, each row's counted
    tokens are relabelled to slot (row number mod K) so every slot is used. Without the
    handbook (or text=False): random token ids, row r counting for slot r mod K.
    """
    if min(batch_size, seq_len, n_batches, languages) < 1:
        raise BenchError("batch size, sequence length, number of batches and languages must "
                         "all be at least 1")
    batches, source = [], ""
    if text and tokenizer is not None:
        batches, source = _text_batches(tokenizer, batch_size, seq_len, n_batches, languages)
    if not batches:
        batches, source = _random_batches(vocab_size, batch_size, seq_len, n_batches,
                                          languages), "random ids"
    return [b.to(device) for b in batches], source


def _text_batches(tokenizer, batch_size, seq_len, n_batches, languages):
    from ..corpus import DebianHandbook, handbook_available, iter_batches

    if not handbook_available():
        return [], ""
    langs = list(TEXT_LANGUAGES[:min(languages, len(TEXT_LANGUAGES))])
    need = n_batches * batch_size * seq_len
    # Packing spends a few positions on BOS/EOS; 25 % more text than positions is plenty.
    budget = int(need * 1.25 / len(langs)) + 2 * seq_len
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # a language running short is handled below
        stream = iter_batches(DebianHandbook(langs, split="all"), tokenizer, langs,
                              tokens_per_language=budget, max_length=seq_len,
                              batch_size=batch_size, packing=True)
        batches = []
        for batch in stream:
            if tuple(batch.input_ids.shape) == (batch_size, seq_len):
                batches.append(batch)
            if len(batches) == n_batches:
                break
    if len(batches) < n_batches:
        raise BenchError(f"the handbook gave only {len(batches)} full batches of "
                         f"{batch_size}x{seq_len} tokens; lower --seq-len or --batch-size")
    if languages > len(langs):
        for b, batch in enumerate(batches):
            rows = torch.arange(b * batch_size, (b + 1) * batch_size).remainder(languages)
            counted = batch.row_lang >= 0
            batch.row_lang = torch.where(counted, rows.to(torch.int32)[:, None],
                                         torch.full_like(batch.row_lang, -1))
            batch.tokens_per_language = torch.bincount(
                batch.row_lang[counted].long(), minlength=languages)
    return batches, f"debian-handbook {','.join(langs)}"


def _random_batches(vocab_size, batch_size, seq_len, n_batches, languages) -> List[Batch]:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for b in range(n_batches):
        ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=gen)
        rows = torch.arange(b * batch_size, (b + 1) * batch_size).remainder(languages)
        row_lang = rows.to(torch.int32)[:, None].expand(batch_size, seq_len).contiguous()
        batches.append(Batch(ids, torch.ones_like(ids), row_lang,
                             torch.bincount(row_lang.reshape(-1).long(), minlength=languages)))
    return batches


# ---- the variants -----------------------------------------------------------------------------
class PlainForward:
    """(a) The model as it is: no statistics."""
    name = "plain"

    def install(self, model: nn.Module) -> None:
        pass

    def before_batch(self, batch: Batch) -> None:
        pass

    def remove(self) -> None:
        pass

    def counts(self) -> Optional[torch.Tensor]:
        return None


class HookCounting:
    """(b) The reference user code: a forward hook on each MLP's activation module counting
    `act > 0` per language in PyTorch.

    Written as a user writes it after LAPE (`over_zero[layer] += (activation > 0).sum(dim=(0, 1))`
    per language), with one boolean mask per language computed once per batch. Of three obvious
    ways to write the count, this was the fastest measured at M=1024 tokens, I=2048, K=8 (fp32,
    2 cores): 0.82 ms per layer, against 2.2 ms for `index_add_` of the int64 activity into a
    [K+1, I] buffer and 1.5 ms for a one-hot matmul. So the baseline is the strongest of them.
    """
    name = "hooks"

    def __init__(self, num_languages: int):
        self.K = num_languages
        self._hooks: list = []
        self._counts: List[torch.Tensor] = []
        self._masks: List[torch.Tensor] = []

    def install(self, model: nn.Module) -> None:
        self._counts = []
        for act, neurons in activation_modules(model):
            counts = torch.zeros(self.K, neurons, dtype=torch.int64,
                                 device=_device_of(act, model))
            self._counts.append(counts)
            self._hooks.append(act.register_forward_hook(self._hook(counts)))

    def _hook(self, counts: torch.Tensor):
        def hook(module, inputs, output):
            active = (output > 0).reshape(-1, output.shape[-1])          # [tokens, I]
            for k, mask in enumerate(self._masks):
                counts[k] += active[mask].sum(dim=0)
        return hook

    def before_batch(self, batch: Batch) -> None:
        row_lang = batch.row_lang.reshape(-1)
        self._masks = [row_lang == k for k in range(self.K)]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def counts(self) -> torch.Tensor:
        return torch.stack([c.cpu() for c in self._counts], dim=1)     # [K, L, I]


class PatchCounting:
    """(c) `ln.patch(model, impl=impl)` recording K languages (with `hist_bins`, also
    histograms over `ops.default_hist_edges(hist_bins)` and maxima, as `scan --hist`)."""

    def __init__(self, num_languages: int, impl: str, hist_bins: Optional[int] = None):
        self.K, self.impl, self.hist_bins = num_languages, impl, hist_bins
        self.name = f"patch:{impl}" + ("+hist" if hist_bins else "")
        self._handle = None

    def install(self, model: nn.Module) -> None:
        from ..models.patch import patch
        from ..ops import default_hist_edges
        self._handle = patch(model, impl=self.impl)
        edges = default_hist_edges(self.hist_bins) if self.hist_bins else None
        self._handle.start_recording(self.K, hist_edges=edges, track_amax=edges is not None)

    def before_batch(self, batch: Batch) -> None:
        self._handle.set_rows(batch.row_lang)

    def remove(self) -> None:
        self._handle.unpatch()

    def counts(self) -> torch.Tensor:
        return self._handle.collect()["counts"]


def activation_modules(model: nn.Module) -> List[Tuple[nn.Module, int]]:
    """(activation module, neurons) of each decoder layer, in layer order: where the hook code
    attaches."""
    from ..models.adapters import find_mlps
    acts = []
    for site in find_mlps(model):
        act = site.module if site.layout.kind == "inline" else getattr(site.owner,
                                                                      site.layout.act_attr, None)
        if not isinstance(act, nn.Module):
            raise BenchError(f"layer {site.layer} has no activation module "
                             f"{site.layout.act_attr!r} to hook; the hook baseline needs one")
        acts.append((act, site.intermediate_size))
    if len({id(a) for a, _ in acts}) != len(acts):
        raise BenchError("the decoder layers share one activation module, so per-layer hooks "
                         "cannot tell the layers apart")
    return acts


def _device_of(module: nn.Module, model: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    from ..scan import _input_device  # activations have no weights: the model's device
    return _input_device(model)


# ---- measurement ------------------------------------------------------------------------------
def _proc_status(key: str) -> float:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc malloc_trim), so the resident set before a
    pass does not already hold the previous pass's freed activations (then the peak above it
    would read 0)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory during a block, in MiB: `extra` above the start and the absolute `peak`.

    CUDA: the caching allocator's peak. CPU (Linux): the process's peak resident set (VmHWM),
    reset on entry through /proc/self/clear_refs; elsewhere both stay NaN.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.extra = self.peak = float("nan")

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self._start = float("nan")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            _release_free_heap()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")                  # 5: reset the peak resident set size
                self._start = _proc_status("VmRSS")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._start == self._start:         # not NaN: the reset worked
            self.peak = _proc_status("VmHWM")
        self.extra = self.peak - self._start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_pass(forward, variant, batches: Sequence[Batch], device: torch.device
              ) -> Tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one pass of `variant` over `batches`
    (already installed). CPU time counts only when our threads ran, so other processes on a
    shared machine disturb it much less than the wall clock."""
    _synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for batch in batches:
            variant.before_batch(batch)
            forward(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    use_cache=False)
    _synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def _median_iqr(values: Sequence[float]) -> Tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    if len(values) < 2:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]


@dataclass
class VariantResult:
    name: str
    tokens_per_s: List[float]                  # one per round
    peak_mem_mb: float                         # above the model's resident memory
    peak_rss_mb: float                         # absolute (CPU: the process; CUDA: allocator)
    ratio_vs_plain: List[float] = field(default_factory=list)   # per round, paired
    ratio_vs_hooks: List[float] = field(default_factory=list)
    cpu_tokens_per_s: List[float] = field(default_factory=list)      # on process CPU time
    cpu_ratio_vs_plain: List[float] = field(default_factory=list)
    cpu_ratio_vs_hooks: List[float] = field(default_factory=list)
    counts_differing: Optional[int] = None     # entries unequal to the hook code's (plain: None)


@dataclass
class ScanBenchResult:
    """Everything one run measured; `rows()` for the CSV, `summary()` for JSON."""
    info: Dict[str, object]                    # model, shapes, machine, load, ...
    variants: Dict[str, VariantResult]
    default_variant: str

    def rows(self) -> List[Dict[str, object]]:
        out = []
        for v in self.variants.values():
            tps, tps_iqr = _median_iqr(v.tokens_per_s)
            rvp, rvp_iqr = _median_iqr(v.ratio_vs_plain)
            rvh, rvh_iqr = _median_iqr(v.ratio_vs_hooks)
            row = dict(self.info, variant=v.name, tokens_per_s=tps, tokens_per_s_iqr=tps_iqr,
                       tokens_per_s_min=min(v.tokens_per_s), tokens_per_s_max=max(v.tokens_per_s),
                       ratio_vs_plain=rvp, ratio_vs_plain_iqr=rvp_iqr, ratio_vs_hooks=rvh,
                       ratio_vs_hooks_iqr=rvh_iqr,
                       cpu_ratio_vs_plain=_median_iqr(v.cpu_ratio_vs_plain)[0],
                       cpu_ratio_vs_hooks=_median_iqr(v.cpu_ratio_vs_hooks)[0],
                       peak_mem_mb=v.peak_mem_mb,
                       peak_rss_mb=v.peak_rss_mb, counts_differing=v.counts_differing)
            out.append({k: _fmt(row.get(k)) for k in CSV_FIELDS})
        return out

    def summary(self) -> Dict[str, object]:
        """The JSON object of `langneuron bench scan --json` (ratios for the default impl)."""
        default = self.variants[self.default_variant]
        variants = {}
        for v in self.variants.values():
            tps, tps_iqr = _median_iqr(v.tokens_per_s)
            variants[v.name] = dict(
                tokens_per_s=tps, tokens_per_s_iqr=tps_iqr, tokens_per_s_rounds=v.tokens_per_s,
                ratio_vs_plain=_median_iqr(v.ratio_vs_plain)[0],
                ratio_vs_hooks=_median_iqr(v.ratio_vs_hooks)[0],
                cpu_tokens_per_s=_json_float(_median_iqr(v.cpu_tokens_per_s)[0]),
                cpu_ratio_vs_plain=_json_float(_median_iqr(v.cpu_ratio_vs_plain)[0]),
                cpu_ratio_vs_hooks=_json_float(_median_iqr(v.cpu_ratio_vs_hooks)[0]),
                peak_mem_mb=_json_float(v.peak_mem_mb), peak_rss_mb=_json_float(v.peak_rss_mb),
                counts_differing=v.counts_differing)
        return dict(self.info, default_impl=self.default_variant.split(":", 1)[1],
                    ratio_vs_plain=_median_iqr(default.ratio_vs_plain)[0],
                    ratio_vs_hooks=_median_iqr(default.ratio_vs_hooks)[0],
                    cpu_ratio_vs_plain=_json_float(_median_iqr(default.cpu_ratio_vs_plain)[0]),
                    cpu_ratio_vs_hooks=_json_float(_median_iqr(default.cpu_ratio_vs_hooks)[0]),
                    counts_exact=default.counts_differing == 0,
                    counts_differing=default.counts_differing, variants=variants)


def _json_float(x: float) -> Optional[float]:
    return None if x != x else x                 # NaN is not JSON


def _fmt(value):
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return "" if value is None else value


def implementations(device: torch.device, dtype: torch.dtype,
                    requested: Optional[str] = None) -> Tuple[List[str], str]:
    """(implementations to time, the default one). `requested` times only that one (an error
    saying what runs here when it cannot run); otherwise the reference and every kernel that
    automatic selection may pick on this device."""
    from ..ops import dispatch
    from ..ops.benchmark import elementwise_implementations
    try:
        default = dispatch.select_impl(device, dtype, requested)
    except (RuntimeError, ValueError) as exc:
        raise BenchError(str(exc)) from None
    if requested:
        return [default], default
    impls = elementwise_implementations(device, dtype) + ["torch"]
    if default not in impls:
        impls.insert(0, default)
    return impls, default


def run_scan_benchmark(model: nn.Module, batches: Sequence[Batch], *, languages: int,
                       impls: Sequence[str], default_impl: str, rounds: int = 7,
                       experiment: str = "compare", model_name: Optional[str] = None,
                       text: str = "", progress: bool = False,
                       hist_bins: Optional[int] = None) -> ScanBenchResult:
    """Time plain, hooks and patch:<impl> for each impl over `batches`, interleaved.

    batches: the same list for every variant (see `make_batches`); languages: K, the number of
    language slots recorded (row_lang values must be below it). Raises BenchError when the
    patch's counts differ from the hook code's. hist_bins: also time `patch:<impl>+hist`
    (histograms of that many bins and maxima) for each impl.
    """
    from ..models.loading import model_name as loaded_name
    from ..ops.benchmark import device_description
    from ..scan import _forward_callable, _input_device  # exactly the call ln.scan makes

    if rounds < 1:
        raise BenchError("rounds must be at least 1")
    if not batches:
        raise BenchError("no batches to run")
    device = _input_device(model)
    forward = _forward_callable(model)
    model.eval()
    load_start = os.getloadavg()[0]
    variants = [PlainForward(), HookCounting(languages)]
    variants += [PatchCounting(languages, impl) for impl in impls]
    if hist_bins:
        variants += [PatchCounting(languages, impl, hist_bins) for impl in impls]
    tokens = sum(b.input_ids.numel() for b in batches)

    # Warm-up forward (lazy initialisation), then one pass per variant from fresh buffers:
    # warm-up of the variant, its peak memory and its counts.
    with torch.inference_mode():
        forward(input_ids=batches[0].input_ids, attention_mask=batches[0].attention_mask,
                use_cache=False)
    memory, counts = {}, {}
    for v in variants:
        v.install(model)
        try:
            with PeakMemory(device) as mem:
                _one_pass(forward, v, batches, device)
            memory[v.name] = (mem.extra, mem.peak)
            counts[v.name] = v.counts()
        finally:
            v.remove()
    dtype = next(model.parameters()).dtype
    differing = compare_counts(counts, dtype)

    seconds: Dict[str, List[Tuple[float, float]]] = {v.name: [] for v in variants}
    from tqdm.auto import tqdm
    for r in tqdm(range(rounds), desc="bench scan", unit="round", disable=not progress):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            v.install(model)
            try:
                seconds[v.name].append(_one_pass(forward, v, batches, device))
            finally:
                v.remove()

    results = {}
    for v in variants:
        tps = [tokens / wall for wall, _ in seconds[v.name]]
        results[v.name] = VariantResult(v.name, tps, *memory[v.name],
                                        counts_differing=differing.get(v.name))
        if device.type == "cpu":      # on a GPU the host's CPU time says nothing of the work
            results[v.name].cpu_tokens_per_s = [tokens / max(cpu, 1e-9)
                                                for _, cpu in seconds[v.name]]
    plain, hooks = results["plain"], results["hooks"]
    for res in results.values():
        res.ratio_vs_plain = _ratios(res.tokens_per_s, plain.tokens_per_s)
        res.ratio_vs_hooks = _ratios(res.tokens_per_s, hooks.tokens_per_s)
        res.cpu_ratio_vs_plain = _ratios(res.cpu_tokens_per_s, plain.cpu_tokens_per_s)
        res.cpu_ratio_vs_hooks = _ratios(res.cpu_tokens_per_s, hooks.cpu_tokens_per_s)

    machine, device_name = device_description(device)
    first = batches[0].input_ids
    from ..models.adapters import find_mlps
    sites = find_mlps(model)
    info = dict(
        run_id=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        experiment=experiment, machine=machine, device_name=device_name,
        torch_version=torch.__version__, threads=torch.get_num_threads(),
        load_avg_start=round(load_start, 2), load_avg_end=round(os.getloadavg()[0], 2),
        model=model_name or loaded_name(model),
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        layers=len(sites), intermediate=sites[0].intermediate_size,
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), device=device.type,
        text=text, batch=first.shape[0], seq_len=first.shape[1], n_batches=len(batches),
        K=languages, rounds=rounds, tokens=tokens)
    return ScanBenchResult(info, results, f"patch:{default_impl}")


def _ratios(a: Sequence[float], b: Sequence[float]) -> List[float]:
    """Per-round ratios a[r] / b[r] (the same round: the same load)."""
    return [x / y for x, y in zip(a, b)]


def compare_counts(counts: Dict[str, Optional[torch.Tensor]],
                   dtype: torch.dtype = torch.float32) -> Dict[str, int]:
    """Entries of each patch:<impl>'s counts [K, L, I] unequal to the hook code's (hooks: 0).
    Raises BenchError when layer 0 differs at all (same input: a counting error) or, in float32,
    when more than MAX_DIFFERING_FP32 of the entries differ."""
    reference = counts["hooks"]
    if int(reference.sum()) == 0:
        raise BenchError("the hook code counted no active neuron; the batches count no token")
    differing = {"hooks": 0}
    for name, c in counts.items():
        if not name.startswith("patch:"):
            continue
        unequal = c != reference
        first = int(unequal[:, 0].sum())
        differing[name] = int(unequal.sum())
        limit = MAX_DIFFERING_FP32 * reference.numel() if dtype == torch.float32 else None
        if first or (limit is not None and differing[name] > limit):
            raise BenchError(f"{name} counts differ from the hook code's in {differing[name]} "
                             f"of {reference.numel()} entries ({first} in layer 0, which sees "
                             f"the same input in both); the comparison would be void")
    return differing


def append_csv(rows: Sequence[Dict[str, object]], path: str | os.PathLike) -> None:
    """Append rows to `path` (header written when the file is new)."""
    from ..ops.benchmark import append_csv as append_rows
    append_rows(rows, path, fieldnames=CSV_FIELDS)


def format_table(result: ScanBenchResult) -> str:
    """Plain-text table: tokens/s, spread, ratios and memory per variant."""
    i = result.info
    lines = [f"{i['model']} ({i['params_m']}M params, {i['layers']} layers x {i['intermediate']} "
             f"neurons), {i['dtype']} on {i['device_name']}, batch {i['batch']} x {i['seq_len']} "
             f"tokens x {i['n_batches']} batches, K = {i['K']} languages, {i['rounds']} rounds, "
             f"text: {i['text']}; load average {i['load_avg_start']} -> {i['load_avg_end']}"]
    header = (f"{'variant':>16} {'tokens/s':>10} {'IQR':>8} {'vs plain':>9} {'vs hooks':>9} "
              f"{'cpu-time vs plain':>18} {'vs hooks':>9} {'peak MiB':>9} {'counts differing':>17}")
    lines += [header, "-" * len(header)]
    for v in result.variants.values():
        tps, iqr = _median_iqr(v.tokens_per_s)
        differing = "-" if v.counts_differing is None else str(v.counts_differing)
        lines.append(f"{v.name:>16} {tps:>10.1f} {iqr:>8.1f} "
                     f"{_median_iqr(v.ratio_vs_plain)[0]:>8.3f}x "
                     f"{_median_iqr(v.ratio_vs_hooks)[0]:>8.3f}x "
                     f"{_median_iqr(v.cpu_ratio_vs_plain)[0]:>17.3f}x "
                     f"{_median_iqr(v.cpu_ratio_vs_hooks)[0]:>8.3f}x {v.peak_mem_mb:>9.1f} "
                     f"{differing:>17}")
    lines.append("vs plain / vs hooks: median over rounds of this variant's tokens/s divided by "
                 "that variant's in the same round (> 1: faster); cpu-time: the same on this "
                 "process's CPU time instead of the wall clock. peak MiB: above the resident "
                 "model. counts differing: entries unequal to the hook code's counts (0 = exact).")
    return "\n".join(lines)


__all__ = ["BenchError", "ScanBenchResult", "run_scan_benchmark", "make_batches",
           "load_bench_model", "implementations", "append_csv", "format_table", "CSV_FIELDS",
           "HookCounting", "PatchCounting", "PlainForward", "PeakMemory", "toy_model"]
