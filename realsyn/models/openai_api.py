"""Backends on an OpenAI-compatible HTTP server (vLLM, llama.cpp server, TEI, OpenAI, ...).

Spec: `openai:URL#MODEL`, e.g. `openai:http://host:8000#Qwen/Qwen2-VL-7B-Instruct`. URL may end in
`/v1` or not; an optional query sets client options, defaults
`?timeout=60&retries=3&concurrency=8&batch=32&backoff=0.5` (batch = embedding inputs per request).
`OPENAI_API_KEY`, when set, is sent as a bearer token. Only the configured host is contacted:
stdlib `http.client`, no proxies, no redirects.

- joint/text (`POST /v1/embeddings`): texts are sent as strings; images as base64 data URLs
  (`data:image/png;base64,...`) in the same `input` list. That image convention is this project's
  choice: servers differ (some want a `modality` field or chat-style messages), so a server that
  refuses it needs a thin adapter. `dim` comes from the first response. Outputs are L2-normalised float32.
- llm (`POST /v1/chat/completions`, `temperature`, `max_tokens`, `seed`); `perplexity` uses
  `POST /v1/completions` with `echo=true, logprobs=1, max_tokens=0` (vLLM), else NotImplementedError.
- captioner: one vision chat message per image (`image_url` data URL) with `CAPTION_PROMPT`.

Robustness: per-request socket timeout; retries with exponential backoff (backoff * 2**attempt) on
connection errors, timeouts, 429 and 5xx; at most `concurrency` requests in flight per backend;
results in input order.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from realsyn.models import registry

CAPTION_PROMPT = "Describe the image in one short sentence."
_OPTIONS = {"timeout": float, "retries": int, "concurrency": int, "batch": int, "backoff": float}


class APIError(RuntimeError):
    """The server answered with an error, or could not be reached after all retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


class Client:
    """JSON POSTs to one OpenAI-compatible server, with retries and a concurrency limit."""

    def __init__(self, url: str, model: str, *, timeout: float = 60.0, retries: int = 3,
                 concurrency: int = 8, batch: int = 32, backoff: float = 0.5) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise registry.ModelError(f"bad openai URL '{url}'; expected http(s)://host[:port][/v1]")
        if not model:
            raise registry.ModelError(f"openai spec needs a model: openai:{url}#MODEL")
        self.url, self.model = url, model
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/").removesuffix("/v1") + "/v1"
        self.base = f"{parts.scheme}://{parts.netloc}{self.prefix}"  # for messages
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency, self.batch = concurrency, batch
        self.api_key = os.environ.get("OPENAI_API_KEY")
        self._slots = threading.BoundedSemaphore(concurrency)

    @classmethod
    def from_spec(cls, args: str) -> Client:
        """`URL[?opt=value...]#MODEL` -> Client."""
        url, _, model = args.partition("#")
        url, _, query = url.partition("?")
        opts: dict[str, Any] = {}
        for key, value in parse_qsl(query):
            if key not in _OPTIONS:
                raise registry.ModelError(f"unknown openai option '{key}'; known: {', '.join(_OPTIONS)}")
            opts[key] = _OPTIONS[key](value)
        return cls(url, model, **opts)

    def _once(self, path: str, body: bytes) -> tuple[int, bytes, float | None]:
        conn_cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = conn_cls(self.host, self.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request("POST", self.prefix + path, body, headers)
            resp = conn.getresponse()
            retry_after = resp.getheader("Retry-After")
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            return resp.status, resp.read(), wait
        finally:
            conn.close()

    def post(self, path: str, payload: dict) -> dict:
        """POST `payload` to `/v1{path}`; the decoded JSON answer. Raises APIError."""
        body = json.dumps(payload).encode()
        for attempt in range(self.retries + 1):
            wait = None
            try:
                with self._slots:
                    status, data, wait = self._once(path, body)
            except (OSError, http.client.HTTPException) as exc:
                error = APIError(f"POST {self.base}{path}: {type(exc).__name__}: {exc}")
            else:
                if status == 200:
                    try:
                        return json.loads(data)
                    except ValueError as exc:
                        raise APIError(f"POST {self.base}{path}: answer is not JSON: {exc}", status) from exc
                error = APIError(f"POST {self.base}{path}: HTTP {status}: {data[:300].decode(errors='replace')}", status)
                if not _retryable(status):
                    raise error
            if attempt < self.retries:
                time.sleep(min(wait if wait is not None else self.backoff * 2 ** attempt, 60.0))
        raise error

    def map(self, path: str, payloads: Sequence[dict]) -> list[dict]:
        """POST every payload, `concurrency` at a time; answers in input order."""
        if len(payloads) <= 1:
            return [self.post(path, p) for p in payloads]
        with ThreadPoolExecutor(min(self.concurrency, len(payloads))) as pool:
            return list(pool.map(lambda p: self.post(path, p), payloads))


def data_url(image: bytes) -> str:
    """Image bytes as a `data:` URL; the MIME type is sniffed from the magic bytes."""
    mime = next((m for sig, m in [(b"\x89PNG", "png"), (b"\xff\xd8", "jpeg"), (b"GIF8", "gif"), (b"BM", "bmp")]
                 if image.startswith(sig)), "webp" if image[8:12] == b"WEBP" else "png")
    return f"data:image/{mime};base64,{base64.b64encode(image).decode()}"


def _chat_text(answer: dict) -> str:
    return (answer["choices"][0]["message"].get("content") or "").strip()


class OpenAIEmbedder:
    """`/v1/embeddings` for texts and (as data URLs) images."""

    def __init__(self, client: Client) -> None:
        self.client, self.name = client, f"openai:{client.model}"
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed_texts(["dimension probe"])
        return self._dim  # type: ignore[return-value]

    def _embed(self, inputs: list[str]) -> np.ndarray:
        size = self.client.batch
        payloads = [{"model": self.client.model, "input": inputs[i:i + size], "encoding_format": "float"}
                    for i in range(0, len(inputs), size)]
        rows = [np.asarray([d["embedding"] for d in sorted(a["data"], key=lambda d: d["index"])], np.float32)
                for a in self.client.map("/embeddings", payloads)]
        if not rows:
            return np.zeros((0, self._dim or 0), np.float32)
        out = np.concatenate(rows)
        if len(out) != len(inputs):
            raise APIError(f"{self.client.base}/embeddings returned {len(out)} embeddings for {len(inputs)} inputs")
        self._dim = out.shape[1]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts))

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        return self._embed([data_url(b) for b in images])


class OpenAILLM:
    """`/v1/chat/completions` for generation, `/v1/completions` prompt logprobs for perplexity."""

    def __init__(self, client: Client) -> None:
        self.client, self.name = client, f"openai:{client.model}"

    def generate(self, prompts: Sequence[list[dict]], *, max_tokens: int = 96,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        payloads = [{"model": self.client.model, "messages": list(m), "max_tokens": max_tokens,
                     "temperature": temperature, "seed": seed} for m in prompts]
        return [_chat_text(a) for a in self.client.map("/chat/completions", payloads)]

    def perplexity(self, texts: Sequence[str]) -> np.ndarray:
        payloads = [{"model": self.client.model, "prompt": t, "echo": True, "logprobs": 1,
                     "max_tokens": 0, "temperature": 0.0} for t in texts]
        try:
            answers = self.client.map("/completions", payloads)
            logprobs = [[x for x in a["choices"][0]["logprobs"]["token_logprobs"] if x is not None] for a in answers]
        except (APIError, KeyError, TypeError, IndexError) as exc:
            if isinstance(exc, APIError) and (exc.status is None or _retryable(exc.status)):
                raise
            raise NotImplementedError(
                f"{self.client.base}/completions does not return prompt logprobs (echo=true, logprobs=1, "
                f"max_tokens=0; vLLM does): {exc}") from exc
        return np.array([np.exp(-np.mean(lp)) if lp else np.nan for lp in logprobs], np.float64)


class OpenAICaptioner:
    """One vision chat request per image."""

    def __init__(self, client: Client, max_tokens: int = 64) -> None:
        self.client, self.name, self.max_tokens = client, f"openai:{client.model}", max_tokens

    def caption(self, images: Sequence[bytes]) -> list[str]:
        payloads = [{"model": self.client.model, "max_tokens": self.max_tokens, "temperature": 0.0, "messages": [
            {"role": "user", "content": [{"type": "text", "text": CAPTION_PROMPT},
                                         {"type": "image_url", "image_url": {"url": data_url(b)}}]}]}
                    for b in images]
        return [_chat_text(a) for a in self.client.map("/chat/completions", payloads)]


def _builder(cls: Callable[[Client], Any]) -> Callable[[str, str], Any]:
    def build(args: str, device: str) -> Any:
        return cls(Client.from_spec(args))

    build.__doc__ = f"`openai:URL#MODEL` -> {cls.__name__}."
    return build


build_embedder = _builder(OpenAIEmbedder)
build_llm = _builder(OpenAILLM)
build_captioner = _builder(OpenAICaptioner)
