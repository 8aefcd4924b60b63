"""The GPT-4o judge against a real chat-completions HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import logging
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from pm_lightning.eval.judge import Judge, JudgeResult, parse_scores
from tests.openai_stub import OpenAIStub, Reply

KEY = "sk-test-SECRET-0123456789"


def grid(color: str = "red") -> Image.Image:
    return Image.new("RGB", (48, 48), color)


def judge(stub: OpenAIStub, **kw) -> Judge:
    """A short time-out so the whole file runs in seconds (the retried replies send a short Retry-After)."""
    return Judge(
        **{
            "model": "gpt-4o",
            "base_url": stub.base_url,
            "api_key": KEY,
            "timeout": 2.0,
            "max_retries": 2,
            **kw,
        }
    )


def test_success_sends_image_data_url_prompt_and_key():
    with OpenAIStub([Reply('{"Accuracy": 4, "Coherence": 5, "Usability": 3}')]) as stub:
        result = judge(stub).score(grid(), "a lego tower of eight red bricks")
    assert result == JudgeResult(4.0, 5.0, 3.0)
    (req,) = stub.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "gpt-4o"
    parts = body["messages"][-1]["content"]
    text = next(p["text"] for p in parts if p["type"] == "text")
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert "a lego tower of eight red bricks" in text and "Coherence" in text
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (48, 48) and sent.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_500_then_success_is_retried():
    with OpenAIStub(
        [Reply(status=500, retry_after=0.01), Reply('{"Accuracy": 2, "Coherence": 3, "Usability": 1}')]
    ) as stub:
        result = judge(stub).score(grid(), "p")
    assert len(stub.requests) == 2
    assert result.ok and result.scores() == {"accuracy": 2.0, "coherence": 3.0, "usability": 1.0}


def test_429_retries_are_bounded_and_recorded():
    """The client's own retries: 1 + max_retries attempts. Checked red: with the client built with max_retries=0
    (as before) one request came."""
    with OpenAIStub([Reply(status=429, retry_after=0.01)]) as stub:
        result = judge(stub, max_retries=2).score(grid(), "p")
    assert len(stub.requests) == 3  # first attempt + 2 retries
    assert result.scores() == {"accuracy": None, "coherence": None, "usability": None}
    assert "RateLimitError 429" in result.error


def test_client_error_is_not_retried():
    with OpenAIStub([Reply(status=400)]) as stub:
        result = judge(stub).score(grid(), "p")
    assert len(stub.requests) == 1 and "BadRequestError 400" in result.error


@pytest.mark.parametrize(
    "answer",
    ["The sequence is fine, 4 out of 5.", '{"Accuracy": 7, "Coherence": 5, "Usability": 4}', '{"Accuracy": "good"}'],
)
def test_malformed_answer_is_recorded_not_raised(answer):
    with OpenAIStub([Reply(answer)]) as stub:
        result = judge(stub).score(grid(), "p")
    assert result.accuracy is None and result.error.startswith("malformed answer")
    assert len(stub.requests) == 1


def client_clock(sleeps: list[float]) -> SimpleNamespace:
    """The `time` module as the openai client sees it, with `sleep` recording instead of sleeping."""
    return SimpleNamespace(
        **{**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")}, "sleep": sleeps.append}
    )


def test_timeout_is_recorded_within_bounded_attempts(monkeypatch):
    """Bounded by configuration, not measured: each request carries the 0.3 s time-out and the client makes
    1 + max_retries attempts, waiting its own back-off between them (recorded here, not slept)."""
    import openai._base_client as base_client  # the client's own module: its waits are recorded, the stub's slept

    sleeps: list[float] = []  # the client's waits only (the stub server's delay still really sleeps)
    monkeypatch.setattr(base_client, "time", client_clock(sleeps))
    with OpenAIStub([Reply(delay=3.0)]) as stub:
        j = judge(stub, timeout=0.3, max_retries=1)
        result = j.score(grid(), "p")
    assert result.accuracy is None and "APITimeoutError" in result.error
    assert len(stub.requests) == 2  # first attempt + 1 retry, never more
    assert j._client.timeout == 0.3 and j._client.max_retries == 1
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.5  # one back-off: the client's first, 0.5 s less jitter


def test_the_servers_retry_after_is_honoured(monkeypatch):
    """A 429 with Retry-After: 7 makes the client wait 7 s (recorded, not slept) before its retry."""
    import openai._base_client as base_client  # the client's own module: its waits are recorded, the stub's slept

    sleeps: list[float] = []
    monkeypatch.setattr(base_client, "time", client_clock(sleeps))
    with OpenAIStub([Reply(status=429, retry_after=7), Reply()]) as stub:
        result = judge(stub, max_retries=1).score(grid(), "p")
    assert result.ok and len(stub.requests) == 2 and sleeps == [7.0]


def test_connection_refused_is_recorded():
    with OpenAIStub() as stub:
        url = stub.base_url
    result = Judge("gpt-4o", base_url=url, api_key=KEY, timeout=0.5, max_retries=0).score(grid(), "p")
    assert result.accuracy is None and "APIConnectionError" in result.error


def test_code_fenced_json_is_accepted():
    fenced = 'Here you go:\n```json\n{"Accuracy": 5, "Coherence": 4.5, "Usability": 4}\n```'
    with OpenAIStub([Reply(fenced)]) as stub:
        assert judge(stub).score(grid(), "p") == JudgeResult(5.0, 4.5, 4.0)
    assert parse_scores('```\n{"accuracy": 1, "coherence": 1, "usability": 1}\n```') == {
        "accuracy": 1.0,
        "coherence": 1.0,
        "usability": 1.0,
    }
    assert parse_scores('Scores: {"Accuracy": 3, "Coherence": 2, "Usability": 1} as asked.')["coherence"] == 2.0


def test_cache_memory_and_disk(tmp_path):
    with OpenAIStub() as stub:
        first = judge(stub, cache_dir=tmp_path).score(grid(), "p")
        again = judge(stub, cache_dir=tmp_path)  # a new judge: only the disk cache can answer
        hit = again.score(grid(), "p")
        memory_hit = again.score(grid(), "p")
        assert len(stub.requests) == 1
        assert hit.cached and memory_hit.cached and not first.cached
        assert hit.scores() == first.scores()
        # Another prompt, image or model is another key.
        again.score(grid("blue"), "p")
        again.score(grid(), "q")
        judge(stub, cache_dir=tmp_path, model="other").score(grid(), "p")
        assert len(stub.requests) == 4


def test_failures_are_not_cached(tmp_path):
    with OpenAIStub([Reply(status=503), Reply()]) as stub:
        j = judge(stub, cache_dir=tmp_path, max_retries=0)
        assert j.score(grid(), "p").error
        assert j.score(grid(), "p").ok
    assert len(stub.requests) == 2


def test_key_never_in_repr_cache_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with OpenAIStub([Reply(status=401), Reply()]) as stub:
        j = judge(stub, cache_dir=tmp_path)
        failed = j.score(grid(), "p")
        j.score(grid(), "p")
    assert KEY not in repr(j) and KEY not in str(j) and "***" in repr(j)
    assert KEY not in failed.error and KEY not in repr(failed)
    assert list(tmp_path.iterdir())
    assert all(KEY not in f.read_text() for f in tmp_path.iterdir())
    assert KEY not in caplog.text


def test_from_env(monkeypatch, tmp_path):
    with OpenAIStub() as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_MODEL", "judge-model")
        j = Judge.from_env(timeout=2.0)
        assert (j.model, j.base_url, j.timeout) == ("judge-model", stub.base_url, 2.0)
        assert j.score(grid(), "p").ok
        assert Judge.from_env(model="explicit").model == "explicit"
    assert stub.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert stub.requests[0]["body"]["model"] == "judge-model"
    assert KEY not in repr(j)


def test_no_key_and_no_endpoint_fails_without_a_request(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    result = Judge.from_env().score(grid(), "p")
    assert result.accuracy is None and "OPENAI_API_KEY" in result.error
