"""A real HTTP server on 127.0.0.1 speaking the chat-completions protocol, with scripted replies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """One scripted reply: HTTP status, the assistant's text (status 200), a delay before answering and a Retry-After
    header (seconds) when given."""

    content: str = '{"Accuracy": 4, "Coherence": 5, "Usability": 3}'
    status: int = 200
    delay: float = 0.0
    retry_after: float | None = None


class OpenAIStub:
    """`with OpenAIStub([Reply(...), ...]) as stub:` serves `stub.base_url`; the last reply repeats once the script runs out.
    `answer`, when given, replies instead: a function of the request body (a reply that depends on what was sent)."""

    def __init__(self, replies: list[Reply] | None = None, answer: Callable[[dict], Reply] | None = None):
        self.replies, self.answer = list(replies or [Reply()]), answer
        self.requests: list[dict] = []  # {"path", "headers", "body"} per request, in arrival order
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStub:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, request: dict) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.answer is not None:
                return self.answer(request["body"])
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                reply = stub._next(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                time.sleep(reply.delay)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                if reply.status != 200:
                    error = {"error": {"message": f"scripted {reply.status}", "type": "server_error"}}
                    return self._send(reply.status, error, reply.retry_after)
                self._send(200, completion(body.get("model", "stub"), reply.content))

            def _send(self, status: int, payload: dict, retry_after: float | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", str(retry_after))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (time-out test)

            def log_message(self, *args) -> None:
                pass

        return Handler


def completion(model: str, content: str) -> dict:
    """A minimal but complete chat.completion response body."""
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
