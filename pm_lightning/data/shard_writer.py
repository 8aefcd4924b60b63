"""Sequences -> WebDataset tar shards (`shard-000000.tar`, ...) + `index.json`; shard specs -> URLs.

One sample per sequence: `<key>.grid.png` (serpentine grid of square `size`-px frames) and
`<key>.json` = {"caption", "domain", "rows", "cols", "frames", "steps", "source"}.
Shards are written under a hidden temporary name and renamed into place when complete, so a
file called `shard-*.tar` is always whole; with `strict` nothing is renamed until every input
has been written.
"""

from __future__ import annotations

import glob
import io
import json
import multiprocessing as mp
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import braceexpand
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from pm_lightning.core.progress import progress_bar
from pm_lightning.data.grid import frames_to_grid
from pm_lightning.data.importers import PAD_MODES, SequenceSource, Skipped, pad_to_square

SHARD_PATTERN = "shard-{:06d}.tar"
INDEX_NAME = "index.json"
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://")  # opened by webdataset
PNG_COMPRESS_LEVEL = 3  # zlib level: ~2x faster to write than PIL's 6, a few % larger files
TAR_MTIME = 0  # fixed int mtime: byte-identical shards, and no per-member PAX header (a float mtime adds one)


class ShardError(RuntimeError):
    """Shard writing failed (nothing valid, or a skip under `strict`)."""


@dataclass
class ShardConfig:
    """How sequences become shard samples."""

    size: int = 64
    """Frame side in px; every frame is padded to square, then resized to size x size."""
    max_per_shard: int = 1000
    """Samples per tar file."""
    strict: bool = False
    """Any skipped input is an error; nothing is published."""
    pad: str = "white"
    """Fill for padding non-square frames: "white" or "edge" (median colour of the frame border)."""
    workers: int = 1
    """Processes that decode/resize/encode sequences (1 = in this process)."""
    shuffle_seed: int | None = 0
    """Write order = sorted keys permuted with this seed (domains mixed in every shard); None = sorted order."""

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be >= 1 px, got {self.size}")
        if self.max_per_shard < 1:
            raise ValueError(f"max_per_shard must be >= 1, got {self.max_per_shard}")
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {self.pad!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class ShardReport:
    """What was written: shard names and sizes, per-domain and per-layout counts, skipped inputs."""

    out: str
    size: int
    shards: list[str] = field(default_factory=list)
    samples_per_shard: list[int] = field(default_factory=list)
    domains: Counter = field(default_factory=Counter)
    layouts: Counter = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Samples written."""
        return sum(self.samples_per_shard)

    def to_index(self) -> dict:
        """The contents of index.json."""
        return {
            "total": self.total,
            "domains": dict(sorted(self.domains.items())),
            "layouts": dict(sorted(self.layouts.items())),
            "frame_size": self.size,
            "shards": self.shards,
            "samples_per_shard": self.samples_per_shard,
            "skipped_count": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def render_sample(src: SequenceSource, size: int = 64, pad: str = "white") -> dict | Skipped:
    """Load, pad, resize and grid one sequence -> a WebDataset sample dict (or Skipped)."""
    try:
        frames = src.load_frames()
    except Exception as err:  # any decoder failure is a bad input, never a crash
        return Skipped(getattr(err, "path", src.source), f"unreadable image: {err}")
    cells = [_square(f, size, pad) for f in frames]
    grid = frames_to_grid(cells, src.rows, src.cols)
    buf = io.BytesIO()
    grid.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    meta = {
        "caption": src.caption,
        "domain": src.domain,
        "rows": src.rows,
        "cols": src.cols,
        "frames": src.frames,
        "steps": list(src.steps),
        "source": src.source,
    }
    return {
        "__key__": src.key,
        "grid.png": buf.getvalue(),
        "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }


def _square(frame: Image.Image, size: int, pad: str) -> Image.Image:
    """Pad to square (centred) and resize to size x size."""
    frame = pad_to_square(frame, pad)
    return frame if frame.size == (size, size) else frame.resize((size, size), Image.Resampling.LANCZOS)


def report_stderr(skip: Skipped) -> None:
    """Default skip reporter: one line on stderr, path first."""
    tqdm.write(f"skipped {skip.path}: {skip.reason}", file=sys.stderr)


def write_shards(
    items: Iterable[SequenceSource | Skipped],
    out: str | Path,
    cfg: ShardConfig | None = None,
    on_skip: Callable[[Skipped], None] = report_stderr,
) -> ShardReport:
    """Write every valid sequence to tar shards in `out` plus index.json; raise ShardError if none."""
    cfg = cfg or ShardConfig()
    out = Path(out)
    report = ShardReport(out=str(out), size=cfg.size)
    sources = []
    for item in items:
        if isinstance(item, Skipped):
            _skip(report, item, on_skip, cfg.strict)
        else:
            sources.append(item)
    sources = _write_order(_dedupe_keys(sources), cfg.shuffle_seed)
    sink = _ShardSink(out, cfg.max_per_shard, publish_each=not cfg.strict)
    try:
        for sample, src in _rendered(sources, cfg):
            if isinstance(sample, Skipped):
                _skip(report, sample, on_skip, cfg.strict)
                continue
            sink.write(sample)
            report.domains[src.domain] += 1
            report.layouts[f"{src.rows}x{src.cols}"] += 1
        report.shards, report.samples_per_shard = sink.close()
    except BaseException:
        sink.abort()
        raise
    if report.total == 0:
        raise ShardError(f"nothing written to {out}: all {len(report.skipped)} inputs were skipped (reasons above)")
    _publish_index(out, report)
    return report


def _skip(report: ShardReport, skip: Skipped, on_skip: Callable[[Skipped], None], strict: bool) -> None:
    """Record and report one skipped input; under strict, stop."""
    report.skipped.append(skip)
    on_skip(skip)
    if strict:
        raise ShardError(f"--strict: {skip.path}: {skip.reason} (nothing was written)")


def _dedupe_keys(sources: list[SequenceSource]) -> list[SequenceSource]:
    """Sort by key; give a `_2`, `_3` suffix to keys that collided after sanitising."""
    seen: Counter = Counter()
    for src in sorted(sources, key=lambda s: (s.key, s.source)):
        seen[src.key] += 1
        if seen[src.key] > 1:
            src.key = f"{src.key}_{seen[src.key]}"
    return sorted(sources, key=lambda s: s.key)


def _write_order(sources: list[SequenceSource], seed: int | None) -> list[SequenceSource]:
    """Sorted keys, then a seeded permutation so each shard mixes domains (None keeps sorted)."""
    if seed is None:
        return sources
    order = list(sources)
    random.Random(seed).shuffle(order)
    return order


def _rendered(sources: list[SequenceSource], cfg: ShardConfig) -> Iterator[tuple[dict | Skipped, SequenceSource]]:
    """(sample or Skipped, source) in write order, rendered in `cfg.workers` processes."""
    render = partial(render_sample, size=cfg.size, pad=cfg.pad)
    bar = progress_bar(total=len(sources), unit="seq", desc="shards")
    with bar:
        if cfg.workers == 1 or len(sources) < 2 * cfg.workers:
            results: Iterable = map(render, sources)
            yield from _progress(zip(results, sources), bar)
            return
        with _pool_context().Pool(cfg.workers) as pool:
            results = pool.imap(render, sources, chunksize=4)
            yield from _progress(zip(results, sources), bar)


def _pool_context() -> mp.context.BaseContext:
    """fork where available: rendering uses only PIL, and spawn would re-import torch per worker."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _progress(pairs: Iterable, bar: tqdm) -> Iterator:
    """Advance the bar once per item."""
    for pair in pairs:
        yield pair
        bar.update(1)


class _ShardSink:
    """Rotating TarWriter over hidden temporary files, renamed into place when complete."""

    def __init__(self, out: Path, max_per_shard: int, publish_each: bool):
        self.out, self.max, self.publish_each = out, max_per_shard, publish_each
        self.writer: wds.TarWriter | None = None
        self.count = 0
        self.done: list[tuple[Path, Path, int]] = []  # (temporary, final, samples)
        self.published: set[Path] = set()

    def write(self, sample: dict) -> None:
        """Append one sample, starting a new shard when the current one is full."""
        if self.writer is None or self.count >= self.max:
            self._finish()
            self._start()
        self.writer.write(sample)
        self.count += 1

    def _start(self) -> None:
        """Open the next shard under its temporary name."""
        self.out.mkdir(parents=True, exist_ok=True)
        final = self.out / SHARD_PATTERN.format(len(self.done))
        tmp = final.with_name(f".{final.name}.tmp")
        self.writer = wds.TarWriter(str(tmp), encoder=False, mtime=TAR_MTIME)
        self.current, self.count = (tmp, final), 0

    def _finish(self) -> None:
        """Close the current shard; publish it now unless publishing is deferred."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        tmp, final = self.current
        self.done.append((tmp, final, self.count))
        if self.publish_each:
            os.replace(tmp, final)
            self.published.add(final)

    def close(self) -> tuple[list[str], list[int]]:
        """Finish and publish every shard; remove stale shards left by an earlier run."""
        self._finish()
        for tmp, final, _ in self.done:
            if final not in self.published:
                os.replace(tmp, final)
        names = [final.name for _, final, _ in self.done]
        if self.done:
            _remove_stale(self.out, set(names))
        return names, [n for _, _, n in self.done]

    def abort(self) -> None:
        """Drop every unpublished temporary file."""
        if self.writer is not None:
            self.writer.close()
            self.done.append((*self.current, self.count))
            self.writer = None
        for tmp, final, _ in self.done:
            if final not in self.published:
                tmp.unlink(missing_ok=True)


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete shard-*.tar files from an earlier, larger run so directory globs see only this one."""
    for path in sorted(out.glob("shard-*.tar")):
        if path.name not in keep:
            path.unlink()
            tqdm.write(f"removed stale {path} from an earlier run", file=sys.stderr)


def _publish_index(out: Path, report: ShardReport) -> None:
    """Write index.json atomically (temporary file + os.replace)."""
    tmp = out / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(report.to_index(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / INDEX_NAME)


def read_index(shard_dir: str | Path) -> dict | None:
    """index.json of a shard directory, or None when absent or unreadable."""
    path = Path(shard_dir) / INDEX_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------- reading shard specs


def is_remote(url: str) -> bool:
    """URLs that webdataset opens itself (pipe:, http(s), ...), passed through untouched."""
    return url.startswith(REMOTE_PREFIXES)


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs from paths, directories (all *.tar), globs, brace patterns and remote URLs."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for one in braceexpand.braceexpand(item):
            urls.extend(_expand_one(one))
    if not urls:
        raise FileNotFoundError(
            f"no shards match {spec!r}; build them with `python -m pm_lightning.shards --src RAW --out DIR`"
        )
    return urls


def _expand_one(path: str) -> list[str]:
    """One brace-free spec -> URLs."""
    if is_remote(path):
        return [path]
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.tar")))
        if not found:
            raise FileNotFoundError(f"shard directory {path} holds no *.tar files")
        return found
    if glob.has_magic(path):
        return sorted(glob.glob(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"shard {path} does not exist")
    return [path]


def shard_indexes(urls: list[str]) -> list[dict] | None:
    """index.json of every local shard directory, or None if any URL is remote or lacks one."""
    if any(is_remote(u) for u in urls):
        return None
    indexes = [read_index(d) for d in sorted({os.path.dirname(os.path.abspath(u)) for u in urls})]
    return None if any(i is None for i in indexes) else indexes


def shard_sample_counts(urls: list[str]) -> dict[str, int]:
    """Absolute shard path -> its sample count, from the index.json beside local shards (empty when unknown)."""
    out: dict[str, int] = {}
    for folder in sorted({os.path.dirname(os.path.abspath(u)) for u in urls if not is_remote(u)}):
        index = read_index(folder)
        names, counts = (index or {}).get("shards") or [], (index or {}).get("samples_per_shard") or []
        if len(names) == len(counts):
            out.update({os.path.join(folder, n): c for n, c in zip(names, counts)})
    return out
