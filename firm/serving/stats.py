"""What a reward server says it served: Triton's own inference statistics per model, over gRPC.

`served_inferences("127.0.0.1:8001")` → `{"firm_edit_reward": 24, "firm_engine": 48, ...}`: successful inference
requests per model since the server started (Triton's `ModelStatistics.inference_stats.success.count`). This is the
server-side count (what the server did), not the client's (what a client asked for): the quickstart and the
pipelines' evaluation step use it to show that rewards really came through the served critic.
"""

from __future__ import annotations

from firm.errors import FirmError


def served_inferences(url: str, timeout_s: float = 10.0) -> dict[str, int]:
    """Successful inference requests per model of the Triton server at `url` (gRPC `host:port`)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    target = url.removeprefix("grpc://").removeprefix("triton://")
    try:
        client = grpcclient.InferenceServerClient(target)
        try:
            stats = client.get_inference_statistics(as_json=True, client_timeout=timeout_s)
        finally:
            client.close()
    except InferenceServerException as exc:
        raise FirmError(f"{url}: cannot read the server's inference statistics: {exc.message()}") from None
    out: dict[str, int] = {}
    for m in stats.get("model_stats", []):
        count = int(m.get("inference_stats", {}).get("success", {}).get("count", 0) or 0)
        out[m["name"]] = out.get(m["name"], 0) + count
    return out
