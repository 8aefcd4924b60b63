"""GPT-4o judge: the MakeAnything appendix-A rubric (Accuracy, Coherence, Usability, 1-5) on a grid.

Any OpenAI-compatible chat-completions endpoint works (OpenAI, Azure-style proxies, vLLM, ...).
The grid goes as a base64 PNG data URL next to the rubric and the prompt. Retries are the `openai` client's own
(`max_retries`): 408, 409, 429, 5xx, time-outs and connection errors, exponential back-off from 0.5 s to 8 s with
jitter, a server's Retry-After (up to 60 s) honoured. A failure becomes a
`JudgeResult` with missing scores and the reason; `score` never raises. The API key lives only
inside the `openai` client: it is masked in `repr`, scrubbed from error texts and never cached.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from pm_lightning.core.extras import MissingExtra, require

log = logging.getLogger(__name__)

CRITERIA = ("accuracy", "coherence", "usability")
DEFAULT_MODEL = "gpt-4o"
# Part of the cache key: changing the rubric text below must bump it so old answers are not reused.
RUBRIC_VERSION = "makeanything-A.1-v1"
SYSTEM = "You are an assistant that evaluates a sequence of images depicting a procedural process."
RUBRIC = """The image is a grid of frames showing, step by step, the process of making: "{prompt}".
Read the frames in serpentine order: the first row left to right, the next row right to left, and so on.
Score the sequence on three criteria, each an integer from 1 to 5:
- Accuracy: content alignment with the provided prompt, from 1 (not accurate) to 5 (completely accurate).
- Coherence: logical flow, from 1 (disjointed) to 5 (seamless progression).
- Usability: helpfulness for understanding the procedure, from 1 (not helpful) to 5 (highly helpful).
Answer with JSON only, for example: {{"Accuracy": 4, "Coherence": 5, "Usability": 4}}"""
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


@dataclass
class JudgeResult:
    """Scores in [1, 5], or None with `error` saying why; `cached` when no request was made."""

    accuracy: float | None
    coherence: float | None
    usability: float | None
    error: str | None = None
    cached: bool = False

    @classmethod
    def failed(cls, reason: str) -> JudgeResult:
        return cls(None, None, None, error=reason)

    @property
    def ok(self) -> bool:
        return self.error is None

    def scores(self) -> dict[str, float | None]:
        return {c: getattr(self, c) for c in CRITERIA}


def parse_scores(text: str) -> dict[str, float]:
    """The rubric's JSON answer (bare, in a ``` fence, or amid prose) -> {criterion: score}; ValueError if malformed."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates += [text, *_OBJECT.findall(text)]
    for candidate in candidates:
        try:
            answer = json.loads(candidate.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(answer, dict):
            return _check_scores(answer)
    raise ValueError("no JSON object in the answer")


def _check_scores(answer: dict) -> dict[str, float]:
    lowered = {str(k).strip().lower(): v for k, v in answer.items()}
    out = {}
    for c in CRITERIA:
        value = lowered.get(c)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
            raise ValueError(f"{c.capitalize()} must be a number from 1 to 5, got {value!r}")
        out[c] = float(value)
    return out


def image_data_url(image: Image.Image) -> str:
    """PNG-encode `image` as a `data:image/png;base64,...` URL (the chat-completions image input)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def cache_key(image: Image.Image, prompt: str, model: str) -> str:
    """sha256 over the decoded pixels (not the PNG bytes, which depend on the encoder), prompt, model, rubric."""
    rgb = image.convert("RGB")
    pixels = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    return hashlib.sha256("\0".join([RUBRIC_VERSION, model, prompt, pixels]).encode()).hexdigest()


def rubric_messages(image: Image.Image, prompt: str) -> list[dict]:
    """Chat messages: the appendix-A.1 rubric with the prompt, and the grid as an image part."""
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": RUBRIC.format(prompt=prompt)},
                {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            ],
        },
    ]


class Judge:
    """Scores a grid against its prompt with the appendix-A rubric; see the module docstring."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        cache_dir: str | Path | None = None,
    ):
        """
        Args:
            model: chat model name on the endpoint.
            base_url: OpenAI-compatible endpoint (`.../v1`); None = `OPENAI_BASE_URL`, else api.openai.com.
            api_key: None = `OPENAI_API_KEY`. Only an endpoint given by `base_url` may go without one.
            timeout: seconds per request.
            max_retries: the client's retries after the first attempt (429, 5xx, time-outs, connection errors).
            cache_dir: on-disk answer cache (one JSON per key); None = memory only.
        """
        if max_retries < 0 or timeout <= 0:
            raise ValueError(f"Judge: need max_retries >= 0 and timeout > 0, got {max_retries}, {timeout}")
        self.model, self.timeout, self.max_retries = model, timeout, max_retries
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[str, JudgeResult] = {}
        self._secrets = [s for s in (api_key, os.environ.get("OPENAI_API_KEY")) if s]
        self._unavailable: str | None = None
        self._client = self._make_client(api_key or os.environ.get("OPENAI_API_KEY"))

    @classmethod
    def from_env(
        cls,
        model: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        cache_dir: str | Path | None = None,
    ) -> Judge:
        """Arguments win over `OPENAI_MODEL` (default gpt-4o) and `OPENAI_BASE_URL`; the key is always `OPENAI_API_KEY`."""
        return cls(
            model=model or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL,
            base_url=base_url,
            timeout=60.0 if timeout is None else timeout,
            cache_dir=cache_dir,
        )

    def _make_client(self, api_key: str | None):
        try:
            openai = require("openai", "the GPT-4o judge")
        except MissingExtra as err:
            self._unavailable = str(err)
            return None
        if not api_key and not self.base_url:
            self._unavailable = "no API key: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local endpoint)"
            return None
        # A local endpoint (vLLM, a proxy) may need no key; the client insists on a non-empty string.
        return openai.OpenAI(
            api_key=api_key or "unused", base_url=self.base_url, timeout=self.timeout, max_retries=self.max_retries
        )

    def __repr__(self) -> str:
        key = "'***'" if self._secrets else None
        return (
            f"Judge(model={self.model!r}, base_url={self.base_url!r}, api_key={key}, "
            f"timeout={self.timeout}, max_retries={self.max_retries})"
        )

    def score(self, grid: Image.Image, prompt: str) -> JudgeResult:
        """Rubric scores for `grid` (a PIL image) against `prompt`; failures come back as `error`, never raised."""
        try:
            key = cache_key(grid, prompt, self.model)
        except Exception as err:  # noqa: BLE001 - a bad image must not stop training either
            return JudgeResult.failed(self._reason("bad image", err))
        hit = self._memory.get(key) or self._read_cache(key)
        if hit is not None:
            self._memory[key] = hit
            return replace(hit, cached=True)
        if self._unavailable:
            return JudgeResult.failed(self._unavailable)
        try:
            text = self._ask(rubric_messages(grid, prompt))
        except Exception as err:  # noqa: BLE001 - the judge never raises to the caller
            result = JudgeResult.failed(self._reason("request failed", err))
            log.warning("judge: %s", result.error)
            return result
        try:
            result = JudgeResult(**parse_scores(text))
        except ValueError as err:
            result = JudgeResult.failed(self._scrub(f"malformed answer: {err}; answer was {text[:200]!r}"))
            log.warning("judge: %s", result.error)
            return result
        self._memory[key] = result
        self._write_cache(key, result, prompt)
        return result

    def _ask(self, messages: list[dict]) -> str:
        """One chat completion (the client retries transient errors); returns the answer text."""
        response = self._client.chat.completions.create(model=self.model, messages=messages, temperature=0)
        return response.choices[0].message.content or ""

    def _reason(self, what: str, err: Exception) -> str:
        status = getattr(err, "status_code", None)
        detail = f"{type(err).__name__}" + (f" {status}" if status else "") + f": {err}"
        return self._scrub(f"{what}: {detail}")[:500]

    def _scrub(self, text: str) -> str:
        """Remove the API key from any text that may reach logs, results or W&B."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _read_cache(self, key: str) -> JudgeResult | None:
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            return JudgeResult(**_check_scores(entry))
        except (OSError, ValueError, TypeError):
            return None  # a corrupt entry is just a miss

    def _write_cache(self, key: str, result: JudgeResult, prompt: str) -> None:
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            entry = {"model": self.model, "rubric": RUBRIC_VERSION, "prompt": prompt, **result.scores()}
            tmp = self.cache_dir / f"{key}.json.tmp"
            tmp.write_text(json.dumps(entry, indent=1))
            os.replace(tmp, self.cache_dir / f"{key}.json")
        except OSError as err:
            log.warning("judge: cache write failed: %s", err)
