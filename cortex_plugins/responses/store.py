"""The responses this gateway replica produced, kept for `previous_response_id`,
`GET /v1/responses/{id}` and its `input_items`: least recently used first out, bounded
in count and bytes (`[dialects.responses] store_size`, `store_bytes`, read at each
insertion so a reload applies to what follows).

A response keeps its own input items and output, and the id of its predecessor: the
conversation behind an id is its chain, oldest first, and using a chain keeps every
link fresh. A chain with a link gone is not served in part: the model would answer a
conversation with a hole in it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from .errors import PreviousResponseNotFound, ResponseNotFound
from .types import (
    ContentPart,
    FunctionCallItem,
    InputItem,
    MessageItem,
    OutputFunctionCall,
    OutputItem,
    ResponseObject,
)

__all__ = ["ResponseStore", "as_input"]

_encode = msgspec.json.Encoder().encode
_items = msgspec.json.Decoder(list[InputItem])


class _Kept(msgspec.Struct):
    response: bytes  # the Response as GET returns it
    inputs: bytes  # this response's input items
    turn: bytes  # its input items, then its output as input items
    previous: str | None

    @property
    def size(self) -> int:
        return len(self.response) + len(self.inputs) + len(self.turn)


def as_input(item: OutputItem) -> InputItem:
    """An output item as the input item that replays it."""
    if isinstance(item, OutputFunctionCall):
        namespace = item.namespace if isinstance(item.namespace, str) else None
        return FunctionCallItem(id=item.id, call_id=item.call_id, name=item.name,
                                arguments=item.arguments, namespace=namespace)
    return MessageItem(id=item.id, role="assistant", content=[
        ContentPart(type="output_text", text=part.text) for part in item.content])


class ResponseStore:
    def __init__(self, limits: Callable[[], tuple[int, int]]) -> None:
        self._limits = limits  # (responses, bytes) as configured now
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def size(self) -> int:
        """Bytes kept."""
        return self._bytes

    def put(self, response: ResponseObject, inputs: list[InputItem]) -> None:
        turn = [*inputs, *(as_input(item) for item in response.output)]
        kept = _Kept(response=_encode(response), inputs=_encode(inputs), turn=_encode(turn),
                     previous=response.previous_response_id)
        count, size = self._limits()
        if count <= 0 or kept.size > size:
            return
        self._drop(response.id)
        self._kept[response.id] = kept
        self._bytes += kept.size
        while len(self._kept) > count or self._bytes > size:
            self._drop(next(iter(self._kept)))

    def _drop(self, response_id: str) -> bool:
        kept = self._kept.pop(response_id, None)
        if kept is None:
            return False
        self._bytes -= kept.size
        return True

    def delete(self, response_id: str) -> None:
        if not self._drop(response_id):
            raise ResponseNotFound(response_id)

    def _get(self, response_id: str) -> _Kept:
        kept = self._kept.get(response_id)
        if kept is None:
            raise ResponseNotFound(response_id)
        self._kept.move_to_end(response_id)
        return kept

    def response(self, response_id: str) -> bytes:
        return self._get(response_id).response

    def inputs(self, response_id: str) -> list[dict[str, Any]]:
        return list(msgspec.json.decode(self._get(response_id).inputs))

    def history(self, response_id: str) -> list[InputItem]:
        """The conversation up to and including `response_id`'s output, oldest first."""
        chain: list[str] = []
        current: str | None = response_id
        while current is not None and len(chain) <= len(self._kept):
            kept = self._kept.get(current)
            if kept is None:
                raise PreviousResponseNotFound(
                    response_id, None if current == response_id else current)
            chain.append(current)
            current = kept.previous
        items: list[InputItem] = []
        for link in reversed(chain):  # oldest first, so the newest stays the freshest
            self._kept.move_to_end(link)
            items += _items.decode(self._kept[link].turn)
        return items
