"""Running the server: int8 quantisation for CPU serving, and uvicorn on a host and port."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lmpo.policies.lm import LMPolicy

# How long an idle keep-alive connection stays open. It must outlast the clients' own idle limit (httpx and the
# openai client: 5 s): a server that closes at the same moment as the client reuses the connection drops that
# request (the client reads the end of the stream instead of an answer). 75 s is nginx's default.
KEEP_ALIVE_S = 75


def quantize_int8(policy: LMPolicy) -> LMPolicy:
    """``policy`` with its linear layers in int8 (PyTorch's dynamic quantisation: int8 weights, activations
    quantised per batch on the fly), for CPU serving; recurrent cells and embeddings stay float32."""
    with warnings.catch_warnings():  # torch announces the quantized dtypes' future removal on every layer
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        out: LMPolicy = torch.ao.quantization.quantize_dynamic(policy.cpu(), {nn.Linear}, dtype=torch.qint8)
    return out.eval()


def run_server(app: object, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``app`` with uvicorn until Ctrl-C or SIGTERM (which finish the requests in flight)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level,  # type: ignore[arg-type]
                timeout_graceful_shutdown=30, timeout_keep_alive=KEEP_ALIVE_S)
