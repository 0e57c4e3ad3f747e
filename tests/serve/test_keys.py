"""API keys and the bind address of ``lmpo serve``.

1. a server with two keys (one from ``--api-key``, one from ``--api-keys-file``): every endpoint but ``/`` and
   ``/health`` answers 401 in OpenAI's error shape without a key, with a wrong one, with another scheme; 200 with
   either key; the official ``openai`` client raises ``AuthenticationError`` with a wrong key;
2. key settings the command refuses before it serves (exit code 2, one line);
3. the server listens on 127.0.0.1 unless told otherwise, and says where.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import lmpo.serve.runner
from lmpo.cli import build_parser, main
from tests.serve.conftest import LiveServer, start_server

FLAG_KEY = "flag-key-0123456789"  # given with --api-key
FILE_KEY = "file-key-abcdefghij"  # a line of --api-keys-file
CHAT, FEEDBACK = "/v1/chat/completions", "/v1/feedback"
HELLO = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def server(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The module's server (overrides conftest's): a key from the flag, one from a file of comments and blank lines."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# the test's clients\n\n   {FILE_KEY}  \n# {FLAG_KEY}-commented-out\n")
    live = start_server(served_run, "--api-key", FLAG_KEY, "--api-keys-file", str(keys))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def completion_id(server: LiveServer) -> str:
    """A completion to rate (so that feedback with a key answers 200)."""
    r = httpx.post(f"{server.url}{CHAT}", json=HELLO, headers=bearer(FLAG_KEY), timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# (method, path, JSON body): every endpoint a key protects
PROTECTED = [("GET", "/v1/models", None), ("GET", "/v1/models/tiny", None), ("GET", "/metrics", None),
             ("GET", "/openapi.json", None), ("POST", CHAT, HELLO), ("POST", CHAT, {**HELLO, "stream": True}),
             ("POST", FEEDBACK, {"completion_id": "<served>", "rating": "up"})]
PROTECTED_IDS = ["models", "model", "metrics", "openapi", "chat", "chat-stream", "feedback"]
WRONG = {  # Authorization headers that must not pass
    "none": None,
    "wrong-key": f"Bearer wrong-key-{FLAG_KEY}",
    "key-prefix": f"Bearer {FLAG_KEY[:-1]}",
    "key-and-more": f"Bearer {FLAG_KEY}x",
    "both-keys": f"Bearer {FLAG_KEY}{FILE_KEY}",
    "bearer-alone": "Bearer",
    "no-scheme": FLAG_KEY,
    "basic": f"Basic {FLAG_KEY}",
    "basic-encoded": "Basic " + base64.b64encode(f"user:{FLAG_KEY}".encode()).decode(),
    "token-scheme": f"Token {FILE_KEY}",
    "non-ascii": b"Bearer \xff\xfe" + FLAG_KEY.encode(),
}


def request(server: LiveServer, method: str, path: str, body: Any, authorization: str | bytes | None,
            completion: str = "") -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    if isinstance(body, dict) and body.get("completion_id") == "<served>":
        body = {**body, "completion_id": completion}
    return httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=60)


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == "invalid_api_key" and "API key" in error["message"], error


# ------------------------------------------------------------------------------------------ 1. the keys
@pytest.mark.parametrize("authorization", list(WRONG.values()), ids=list(WRONG))
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=PROTECTED_IDS)
def test_refused_without_a_valid_key(server: LiveServer, method: str, path: str, body: Any,
                                     authorization: str | bytes | None) -> None:
    assert_unauthorized(request(server, method, path, body, authorization, completion="chatcmpl-any"))


@pytest.mark.parametrize("authorization", [f"Bearer {FLAG_KEY}", f"Bearer {FILE_KEY}", f"bearer {FILE_KEY}"],
                         ids=["flag-key", "file-key", "lowercase-scheme"])
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=PROTECTED_IDS)
def test_answered_with_either_key(server: LiveServer, completion_id: str, method: str, path: str, body: Any,
                                  authorization: str) -> None:
    r = request(server, method, path, body, authorization, completion=completion_id)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    if body is not None and body.get("stream"):
        assert r.text.endswith("data: [DONE]\n\n"), r.text[-300:]


@pytest.mark.parametrize("authorization", [None, f"Bearer wrong-key-{FLAG_KEY}", f"Basic {FLAG_KEY}"],
                         ids=["none", "wrong-key", "basic"])
@pytest.mark.parametrize("path", ["/", "/health"])
def test_page_and_health_need_no_key(server: LiveServer, path: str, authorization: str | None) -> None:
    r = request(server, "GET", path, None, authorization)
    assert r.status_code == 200, r.text[:300]


def test_the_key_comes_before_the_body(server: LiveServer) -> None:
    """Without a key, a bad body, an unknown route or a wrong model is not looked at: 401, not 400 or 404."""
    assert_unauthorized(httpx.post(f"{server.url}{CHAT}", content=b"{not json", timeout=60))
    assert_unauthorized(httpx.post(f"{server.url}{CHAT}", json={**HELLO, "model": "gpt-4"}, timeout=60))
    assert_unauthorized(httpx.get(f"{server.url}/v1/nothing", timeout=60))
    r = httpx.get(f"{server.url}/v1/nothing", headers=bearer(FILE_KEY), timeout=60)
    assert r.status_code == 404, r.text


def test_refusals_are_counted(server: LiveServer) -> None:
    """A 401 shows on /metrics as an error of its route."""
    assert_unauthorized(httpx.get(f"{server.url}/v1/models", timeout=60))
    metrics = httpx.get(f"{server.url}/metrics", headers=bearer(FLAG_KEY), timeout=60).text
    assert any(line.startswith("lmpo_") and 'status="401"' in line and "/v1/models" in line
               for line in metrics.splitlines()), metrics[:2000]


def test_openai_client(server: LiveServer) -> None:
    messages: Any = HELLO["messages"]
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key=f"wrong-key-{FILE_KEY}", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    for key in (FLAG_KEY, FILE_KEY):
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
        completion = right.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
        assert completion.model == "tiny" and completion.choices[0].message.role == "assistant"
        assert completion.usage is not None and completion.usage.completion_tokens <= 2
        assert [m.id for m in right.models.list().data] == ["tiny"]


def test_keys_are_not_printed(server: LiveServer) -> None:
    out = server.output()
    assert FLAG_KEY not in out and FILE_KEY not in out, out


# ------------------------------------------------------------------------------------------ 2. refused settings
@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command must fail before it serves: were it to get there, fail instead of serving forever."""
    def run_server(*_: Any, **__: Any) -> None:
        raise AssertionError("lmpo serve started serving")
    monkeypatch.setattr(lmpo.serve.runner, "run_server", run_server)


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize(("args", "keys_file", "message"), [
    (["--api-keys-file", "{missing}"], None, "--api-keys-file: cannot read"),
    (["--api-keys-file", "{dir}"], None, "--api-keys-file: cannot read"),
    (["--api-keys-file", "{file}"], "", "holds no key"),
    (["--api-keys-file", "{file}"], "# only a comment\n\n   \n", "holds no key"),
    (["--api-key", "short"], None, "at least 8 characters"),
    (["--api-key", ""], None, "at least 8 characters"),
    (["--api-key", "has a space in it"], None, "no spaces"),
    (["--api-key", FLAG_KEY, "--api-keys-file", "{file}"], "1234567\n", "at least 8 characters"),
    (["--api-keys-file", "{file}"], "two keys-on-one-line\n", "no spaces"),
    (["--max-tokens", "0"], None, "--max-tokens must be at least 1"),
    (["--max-n", "0"], None, "--max-n must be at least 1"),
    (["--threads", "0"], None, "--threads must be at least 1"),
], ids=["missing-file", "directory", "empty-file", "comments-only", "short-key", "empty-key", "key-with-space",
        "short-key-in-file", "space-in-file", "max-tokens-0", "max-n-0", "threads-0"])
def test_refused_settings(text_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                          keys_file: str | None, message: str) -> None:
    if keys_file is not None:
        (tmp_path / "keys.txt").write_text(keys_file)
    where = {"missing": tmp_path / "nope.txt", "dir": tmp_path, "file": tmp_path / "keys.txt"}
    argv = ["serve", str(text_run), *(a.format(**where) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmpo: error: ") and err.count("\n") == 1 and message in err, err


# ------------------------------------------------------------------------------------------ 3. the address
def test_default_host_is_loopback() -> None:
    args = build_parser().parse_args(["serve", "some-run"])
    assert args.host == "127.0.0.1"


def test_listens_on_loopback_only(server: LiveServer) -> None:
    """The server (started without --host) printed its address, and its socket is bound to 127.0.0.1 alone."""
    port = int(server.url.rsplit(":", 1)[1])
    assert f"at http://127.0.0.1:{port}/" in server.output(), server.output()
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].is_file():
        pytest.skip("no /proc/net/tcp (not Linux)")
    listening = []  # the local addresses listening on the server's port, as the kernel writes them (hex)
    for table in tables:
        for line in table.read_text().splitlines()[1:] if table.is_file() else []:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.append(address)
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian; nothing on 0.0.0.0 or ::
