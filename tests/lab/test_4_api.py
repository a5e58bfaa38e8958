"""The service as its users reach it: the real `openai` package through the gateway."""

import concurrent.futures
import json
import shlex
import time

import httpx
import openai
import pytest
from nas_ai_engine.sse import DataParser

from tests.lab.harness import lab_host

pytestmark = pytest.mark.lab
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(gateway_url, api_key):
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=120)


def test_chat_completion(client):
    reply = client.chat.completions.create(
        model=MODEL, max_tokens=24, messages=[{"role": "user", "content": "Name a colour."}])
    assert reply.choices[0].message.content.strip()
    assert reply.usage.completion_tokens >= 1


def test_streamed_chat_arrives_as_it_is_generated(client):
    arrivals = []
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=48, stream=True, temperature=0,
        messages=[{"role": "user", "content": "Count from one to twenty in words."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) >= 10
    # Buffered by a proxy, every chunk would land at once; streamed, they spread over the answer.
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0.05 and len({round(t, 3) for t in arrivals}) > len(arrivals) // 2


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == [MODEL]


def test_embeddings_get_a_404_that_lists_what_is_served(client):
    with pytest.raises(openai.NotFoundError) as refused:
        client.embeddings.create(model=MODEL, input="hello")
    assert "POST /v1/chat/completions" in str(refused.value)


def test_a_request_beyond_a_bound_gets_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, n=3, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.body["param"] == "n" and "one choice per request" in refused.value.body["message"]


def test_requests_spread_over_both_nodes(client, deployment):
    for _ in range(6):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    gateway = lab_host(deployment["groups"]["gateway"][0][0])
    lines = gateway.check_output("tail -n 6 /var/log/nginx/nas-ai.access.log").splitlines()
    upstreams = {json.loads(line)["upstream"] for line in lines}
    expected = {"127.0.0.1:8080"} | {f"{data['ssh_hostname']}:8080" for _, data in deployment["groups"]["inference"][1:]}
    assert upstreams == expected


def test_wrong_key_gets_401(gateway_url, api_key):
    bad = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="sk-not-a-key-of-this-nas", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.models.list()
    assert refused.value.status_code == 401
    assert httpx.get(f"{gateway_url}/v1/models").status_code == 401  # no key at all
    for near in (api_key.upper(), api_key.lower(), api_key[:-1]):  # keys compare exactly
        assert httpx.get(f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {near}"}).status_code == 401


def test_key_guessing_from_one_address_ends_in_429(gateway_url, api_key, deployment):
    """From the second host, an address of its own: wrong keys get 401 up to the burst
    (gateway_auth_failure_burst, 10), then 429; a client with its key is served meanwhile."""
    guesser = lab_host(deployment["groups"]["inference"][1][0])
    script = ("import urllib.request, urllib.error\n"
              "for n in range(16):\n"
              f"    request = urllib.request.Request({gateway_url + '/v1/models'!r}, "
              "headers={'Authorization': 'Bearer sk-guess-%016d' % n})\n"
              "    try:\n        print(urllib.request.urlopen(request, timeout=10).status)\n"
              "    except urllib.error.HTTPError as error:\n        print(error.code)\n")
    statuses = [int(line) for line in guesser.check_output(f"python3 -c {shlex.quote(script)}").split()]
    first_refused = statuses.index(429)  # ValueError: never refused
    # At most the burst and the first request (one more if the rate refilled meanwhile), then 429 alone.
    assert first_refused <= 12 and set(statuses[:first_refused]) == {401} and set(statuses[first_refused:]) == {429}, \
        statuses
    assert httpx.get(f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}).status_code == 200


def test_too_large_body_gets_413(gateway_url, api_key):
    response = httpx.post(f"{gateway_url}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]


def test_malformed_grammar_gets_400_and_the_engine_lives(gateway_url, api_key, deployment):
    hosts = [lab_host(name) for name, _ in deployment["groups"]["inference"]]
    restarts = [h.check_output("systemctl show -p NRestarts --value nas-ai-engine") for h in hosts]
    for _ in range(len(hosts)):  # reach every engine
        response = httpx.post(f"{gateway_url}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                              json={"model": MODEL, "max_tokens": 4, "grammar": "root ::= ((((((",
                                    "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
        assert response.status_code == 400
        assert "grammar" in response.json()["error"]["message"]
    assert [h.check_output("systemctl show -p NRestarts --value nas-ai-engine") for h in hosts] == restarts


def test_too_many_requests_at_once_get_429_with_retry_after(gateway_url, api_key, deployment):
    allowed = deployment["groups"]["gateway"][0][1]["gateway_concurrent_per_key"]

    def long_stream():
        with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {api_key}"},
                          json={"model": MODEL, "max_tokens": 64, "stream": True,
                                "messages": [{"role": "user", "content": "Tell a story."}]}) as response:
            response.read()
            return response.status_code, response.headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(allowed + 2) as pool:
        results = list(pool.map(lambda _: long_stream(), range(allowed + 2)))
    refused = [r for r in results if r[0] == 429]
    assert refused and all(retry_after for _, retry_after in refused), results
    assert sum(1 for status, _ in results if status == 200) >= allowed - 1


def test_too_fast_requests_get_429_with_retry_after(gateway_url, api_key):
    statuses = []
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as http:
        for _ in range(60):  # far above the burst of 20 within a second or two
            response = http.get(f"{gateway_url}/v1/models")
            statuses.append((response.status_code, response.headers.get("retry-after")))
            if response.status_code == 429:
                break
    assert statuses[-1][0] == 429 and statuses[-1][1], statuses
    assert response.json()["error"]["type"] == "rate_limit_error"
    time.sleep(3)  # let the bucket refill for later tests


def test_several_users_are_served_at_once(gateway_url, api_key, deployment):
    """Four streams at once over two engines: with llama-server's slots every stream has its first
    token before any stream ends (one request at a time per engine would queue two of them)."""
    users = 2 * len(deployment["groups"]["inference"])
    start = time.monotonic()

    def stream(_):
        first = None
        with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {api_key}"},
                          json={"model": MODEL, "max_tokens": 64, "stream": True, "temperature": 0,
                                "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}]}) as response:
            assert response.status_code == 200
            events = DataParser()
            for piece in response.iter_bytes():
                for data in events.feed(piece):
                    choice = (json.loads(data).get("choices") or [{}])[0]
                    if first is None and (choice.get("delta") or {}).get("content"):
                        first = time.monotonic() - start
        return first, time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(users) as pool:
        results = list(pool.map(stream, range(users)))
    firsts, ends = [first for first, _ in results], [end for _, end in results]
    assert all(first is not None for first in firsts), results
    assert max(firsts) < min(ends), f"first tokens {firsts} vs ends {ends}: requests were queued"
