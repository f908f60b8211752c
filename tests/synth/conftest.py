"""An OpenAI-compatible chat-completions server on 127.0.0.1 with scripted failures, a multilingual corpus, and
random local LLMs."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Two or more sentences per passage, in seven languages and four scripts; `es` has no language code (identified).
CORPUS = [
    ("en-1", "en", "Berlin", "Berlin is the capital and largest city of Germany. It has about 3.7 million inhabitants. "
     "The city lies on the banks of the Spree river. Berlin is known for its museums and its nightlife."),
    ("en-2", "en", "Photosynthesis", "Photosynthesis is the process by which green plants turn light into chemical "
     "energy. It takes place in the chloroplasts of plant cells. Oxygen is released as a by-product."),
    ("de-1", "de", "Hamburg", "Hamburg ist die zweitgrößte Stadt Deutschlands. Sie liegt an der Elbe und hat einen der "
     "größten Häfen Europas. Die Stadt ist für ihre Speicherstadt bekannt. Viele Brücken verbinden die Stadtteile."),
    ("de-2", "de", "Fotosynthese", "Die Fotosynthese ist ein Prozess, bei dem Pflanzen Lichtenergie in chemische "
     "Energie umwandeln. Sie findet in den Chloroplasten statt. Dabei wird Sauerstoff freigesetzt."),
    ("fr-1", "fr", "Lyon", "Lyon est une ville française située au confluent du Rhône et de la Saône. Elle est connue "
     "pour sa gastronomie. La ville compte environ cinq cent mille habitants."),
    ("ru-1", "ru", "Москва", "Москва является столицей России. В городе живёт более двенадцати миллионов человек. "
     "Через город протекает Москва-река. В центре находится Кремль."),
    ("ja-1", "ja", "京都", "京都は日本の古い都です。多くの寺院や神社があります。毎年たくさんの観光客が訪れます。祇園祭は有名な祭りです。"),
    ("zh-1", "zh", "上海", "上海是中国最大的城市之一。它位于长江入海口。上海有很多高楼大厦。外滩是著名的景点。"),
    ("es-1", "", "", "Madrid es la capital de España. Es la ciudad más poblada del país. El Museo del Prado es uno "
     "de los museos más importantes del mundo. El clima de la ciudad es continental."),
]  # fmt: skip


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for doc_id, language, title, text in CORPUS:
            f.write(json.dumps({"id": doc_id, "language": language, "title": title, "text": text}, ensure_ascii=False))
            f.write("\n")
    return path


_ANSWER_FORMAT = re.compile(r"Answer as JSON: (\{.*\})")
_PASSAGE = re.compile(r'"""\n(.*?)\n"""', re.S)


def echo_answer(body: dict) -> str:
    """A valid answer to any shipped template, made of the passage's own words (so language ID agrees).

    Each key of the prompt's ``Answer as JSON`` example gets a different window of the passage; ``tasks`` gets
    a list of task descriptions.
    """
    prompt = body["messages"][-1]["content"]
    keys = list(json.loads(_ANSWER_FORMAT.search(prompt).group(1)))
    passage = _PASSAGE.search(prompt)
    words = passage.group(1).split() if passage else []
    if len(words) < 4:  # scripts without spaces: characters
        words = list(passage.group(1)) if passage else []
    answer = {}
    for i, key in enumerate(keys):
        if key == "tasks":
            answer[key] = [f"Given a question about topic {n}, retrieve passages that answer it" for n in range(3)]
        else:
            # Different keys get different windows of every other word, so the `copied_passage` rule (a verbatim
            # run of the passage) does not reject them.
            window = words[i * 3 : i * 3 + 12 : 2]
            answer[key] = (" " if len(words[0]) > 1 else "").join(window) + "?"
    return json.dumps(answer, ensure_ascii=False)


class FakeOpenAIServer:
    """``POST /v1/chat/completions`` on 127.0.0.1 (a thread per request), answering with ``answer(body)``.

    ``plan(prompt, attempt)`` decides each attempt: ``"ok"``, an HTTP status (429, 500, 401...) or ``"hang"``
    (sleep past the client's timeout, then answer). The server records every request: ``attempts`` per prompt,
    ``answered`` prompts in order, the ``Authorization`` headers, and the most requests in flight at once.
    """

    def __init__(
        self,
        answer: Callable[[dict], str] = echo_answer,
        plan: Callable[[str, int], object] = lambda prompt, attempt: "ok",
        delay: float = 0.0,
        hang_seconds: float = 3.0,
    ) -> None:
        self.answer, self.plan, self.delay, self.hang_seconds = answer, plan, delay, hang_seconds
        self.attempts: Counter = Counter()
        self.answered: list[str] = []
        self.authorization: set[str] = set()
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server._lock:
                    server.attempts[prompt] += 1
                    attempt = server.attempts[prompt]
                    server.authorization.add(self.headers.get("Authorization", ""))
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    action = server.plan(prompt, attempt)
                    time.sleep(server.hang_seconds if action == "hang" else server.delay)
                    if isinstance(action, int):
                        self._send(action, {"error": {"message": f"scripted {action}", "type": "test"}},
                                   {"retry-after-ms": "10"} if action == 429 else {})  # fmt: skip
                        return
                    content = server.answer(body)
                    self._send(200, {
                        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    })  # fmt: skip
                    with server._lock:
                        server.answered.append(prompt)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the scripted case
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake_server():
    """A factory: ``with fake_server(plan=...) as server: ...``."""
    return FakeOpenAIServer


@pytest.fixture(scope="session")
def save_random_llama():
    """``save_random_llama(folder, chat_template=None)``: see :func:`_save_random_llama`."""
    return _save_random_llama


def _save_random_llama(folder: Path, chat_template: str | None = None) -> str:
    """A 2-layer Llama with random weights and a byte-level tokenizer (no download) saved in ``folder``: a base
    model, or a chat model when given a chat template.

    The vocabulary is the 256 byte symbols and no merges, in a fixed order: BpeTrainer breaks ties in Rust hash
    order, so a trained vocabulary (and with it what the random model writes) differed from process to process."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<eos>": 0} | {symbol: i + 1 for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.add_special_tokens(["<eos>"])
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, eos_token_id=0, pad_token_id=0)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)
