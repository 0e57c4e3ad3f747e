"""``lmpo serve`` under load, side by side in one run: dynamic batching against the same server with batching off,
and int8 against float32.

1. Throughput and latency: ``CLIENTS`` concurrent clients (streaming, so the time to first token is seen), each
   sending ``--requests`` requests one after another, against the demo model (the Support-v0 run of ``make demo``)
   served with ``--max-batch 32`` and with ``--max-batch 1``; then with ``--quantize int8``; ``--rounds`` times in
   turn (a shared machine's speed drifts by tens of percent within minutes: each round's ratio compares servers
   run back to back). Requests per second, generated tokens per second, p50 / p99 latency and time to first token
   (medians over the rounds); each round's ratios and their median.
2. int8's effect on quality: the run's own evaluation (held-out customers, greedy and sampled satisfaction) of the
   float32 and the int8 policy, in this process.

    python bench/serve.py [--run runs/support] [--clients 32] [--requests 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serve.conftest import start_server  # noqa: E402  (the tests' way of starting a real server)


def cpu_model() -> str:
    """The CPU's model name (timings mean little without it)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def customer_lines(run: Path, n: int) -> list[str]:
    """Opening lines of held-out customers of the run's environment."""
    from lmpo.api import load_run

    task, _, _ = load_run(run)
    lines = []
    for example in task.env.examples("heldout")[:n]:
        turns = task.env.conversation().reset(example)
        lines.append(next(t.content for t in reversed(turns) if t.role == "user"))
    return lines


async def one(http: httpx.AsyncClient, url: str, model: str, line: str, max_tokens: int) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streamed request."""
    body = {"model": model, "messages": [{"role": "user", "content": line}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for raw in r.aiter_lines():
            if not raw.startswith("data: {"):
                continue
            chunk = json.loads(raw[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - t0
    return latency, first if first is not None else latency, tokens


async def load(url: str, model: str, lines: list[str], clients: int, requests: int,
               max_tokens: int) -> dict[str, float]:
    """Every client sends ``requests`` requests in turn; the figures of the whole run."""
    async def client(c: int, http: httpx.AsyncClient) -> list[tuple[float, float, int]]:
        return [await one(http, url, model, lines[(c * requests + k) % len(lines)], max_tokens)
                for k in range(requests)]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await one(http, url, model, lines[0], max_tokens)  # warm-up
        before = await batches(http, url)
        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*[client(c, http) for c in range(clients)]) for r in rs]
        wall = time.perf_counter() - t0
        after = await batches(http, url)
    lat = sorted(r[0] for r in results)
    ttft = sorted(r[1] for r in results)

    def pct(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return {"req/s": len(results) / wall, "tok/s": sum(r[2] for r in results) / wall, "p50": pct(lat, 0.5),
            "p99": pct(lat, 0.99), "ttft p50": pct(ttft, 0.5), "ttft p99": pct(ttft, 0.99), "wall": wall,
            "batch": (after[1] - before[1]) / max(after[0] - before[0], 1)}


async def batches(http: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """The server's batch-size histogram: (batches, choices decoded) so far."""
    text = (await http.get(f"{url}/metrics")).text
    values = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("lmpo_batch_size_"))
    return float(values.get("lmpo_batch_size_count", 0)), float(values.get("lmpo_batch_size_sum", 0))


def serve_and_load(run: Path, args: argparse.Namespace, lines: list[str], model: str, *flags: str) -> dict[str, float]:
    """A fresh server (its own feedback store) with ``flags``, under the load."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(run, "--db", f"{tmp}/fb.sqlite", *flags, threads=args.threads, log_dir=Path(tmp))
        try:
            return asyncio.run(load(server.url, model, lines, args.clients, args.requests, args.max_tokens))
        finally:
            server.stop()


def quality(run: Path, conversations: int) -> dict[str, dict[str, float]]:
    """The run's evaluation of the float32 and the int8 policy (held-out customers)."""
    from lmpo.api import load_run
    from lmpo.serve.runner import quantize_int8

    out = {}
    for name in ("float32", "int8"):
        task, policy, _ = load_run(run, overrides=[f"text.eval_conversations={conversations}"])
        if name == "int8":
            policy = quantize_int8(policy)
        task.prepare(policy, resumed=True)
        out[name] = task.evaluate(policy)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/support", help="a served text run (make demo writes runs/support)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=10, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=None, help="the servers' --threads (default: theirs)")
    p.add_argument("--eval-conversations", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three servers, in turn (the machine's speed "
                   "drifts: each round's ratios are measured minutes apart at most)")
    args = p.parse_args()
    run = Path(args.run)
    if not (run / "checkpoints").is_dir():
        sys.exit(f"no trained run at {run}: run `make demo` first (or pass --run RUN_DIR)")
    from lmpo.train.trainer import read_run_config

    model = read_run_config(run).name
    lines = customer_lines(run, 64)
    print(f"CPU: {cpu_model()}; {args.clients} clients x {args.requests} streamed requests, max_tokens "
          f"{args.max_tokens}, server threads {args.threads or 'default'}, model {model} ({run})\n")
    modes = {"batching (max 32)": ("--max-batch", "32"), "no batching": ("--max-batch", "1"),
             "batching, int8": ("--max-batch", "32", "--quantize", "int8")}
    rounds = []
    for k in range(args.rounds):
        rounds.append({name: serve_and_load(run, args, lines, model, *flags) for name, flags in modes.items()})
        on, off, q = (rounds[-1][name] for name in modes)
        print(f"round {k + 1}: batching / no batching {on['req/s'] / off['req/s']:.2f}x, int8 / float32 "
              f"{q['tok/s'] / on['tok/s']:.2f}x", flush=True)
    print(f"\nmedians over {args.rounds} rounds")
    print(f"{'server':<20} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p99 s':>7} {'ttft p50':>9} {'ttft p99':>9} "
          f"{'batch':>6}")
    for name in modes:
        m = {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]}
        print(f"{name:<20} {m['req/s']:7.2f} {m['tok/s']:7.1f} {m['p50']:7.2f} {m['p99']:7.2f} {m['ttft p50']:9.2f} "
              f"{m['ttft p99']:9.2f} {m['batch']:6.1f}")
    ratios = [r["batching (max 32)"]["req/s"] / r["no batching"]["req/s"] for r in rounds]
    speed = [r["batching, int8"]["tok/s"] / r["batching (max 32)"]["tok/s"] for r in rounds]
    print(f"\nbatching / no batching: {statistics.median(ratios):.2f}x requests per second (median; rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"int8 / float32 (batching): {statistics.median(speed):.2f}x tokens per second (median; rounds: "
          f"{', '.join(f'{x:.2f}' for x in speed)})")
    evals = quality(run, args.eval_conversations)
    keys = [k for k in evals["float32"] if "satisfaction" in k or "reward" in k]
    print(f"\nevaluation ({args.eval_conversations} conversations per split)")
    print(f"{'metric':<52} {'float32':>8} {'int8':>8}")
    for k in keys:
        print(f"{k:<52} {evals['float32'][k]:8.3f} {evals['int8'][k]:8.3f}")


if __name__ == "__main__":
    main()
