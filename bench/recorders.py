"""What a DAG run did inside its tasks, recorded for the benchmark: the layers each push sent, the model
stores the ci steps opened (their fetch counters), and which layer of an image holds the model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class PushRecorder:
    """Records every push's stream (layer id → statuses, bytes) by wrapping images.push._read_push_stream."""

    def __init__(self) -> None:
        self.pushes: list[dict[str, dict[str, Any]]] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[PushRecorder]:
        from modelship.images import push

        original = push._read_push_stream

        def wrapper(stream: Any, *args: Any, **kwargs: Any) -> str:
            layers: dict[str, dict[str, Any]] = {}
            self.pushes.append(layers)

            def tee() -> Iterator[dict[str, Any]]:
                for chunk in stream:
                    layer = chunk.get("id")
                    if layer and chunk.get("status"):
                        entry = layers.setdefault(layer, {"statuses": [], "bytes": 0})
                        if chunk["status"] not in entry["statuses"]:
                            entry["statuses"].append(chunk["status"])
                        total = (chunk.get("progressDetail") or {}).get("total") or 0
                        entry["bytes"] = max(entry["bytes"], total)
                    yield chunk

            return original(tee(), *args, **kwargs)

        push._read_push_stream = wrapper
        try:
            yield self
        finally:
            push._read_push_stream = original


class StoreRecorder:
    """Keeps every model store the ci steps open, so their stats counters can be read after a DAG run."""

    def __init__(self) -> None:
        self.stores: list[Any] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[StoreRecorder]:
        from modelship import ci

        original = ci.open_store

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            store = original(*args, **kwargs)
            self.stores.append(store)
            return store

        ci.open_store = wrapper
        try:
            yield self
        finally:
            ci.open_store = original

    def total(self, counter: str) -> int:
        return sum(getattr(store.stats, counter) for store in self.stores)


def model_layer(api: Any, image: str) -> str | None:
    """12-hex prefix of the diff id of the image's `COPY --from=model /model /model` layer (as push shows it).

    Classic-builder history, oldest first: the imported base layer, then one layer per RUN/COPY/ADD;
    other instructions are metadata ("#(nop)" without COPY/ADD). None if that mapping does not add up.
    """
    layers = api.inspect_image(image)["RootFS"]["Layers"]
    history = list(reversed(api.history(image)))
    producing = [h for h in history if "#(nop)" not in h["CreatedBy"] or "#(nop) COPY" in h["CreatedBy"]
                 or "#(nop) ADD" in h["CreatedBy"]]  # fmt: skip
    if len(producing) != len(layers):
        return None
    for entry, diff_id in zip(producing, layers, strict=True):
        if "COPY" in entry["CreatedBy"] and entry["CreatedBy"].rstrip().endswith(" in /model"):
            return diff_id.split(":", 1)[1][:12]
    return None
