"""The dashboard shows honest states: an unservable model with its reason and no Load
button, and a load under way with its progress. Headless Chromium (as test_ui.py), a
synthetic neuron with a small budget: what is tested is the page, not inference."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess, running_neuron
from ..gateway_support import running_gateway
from .test_ui import WAIT_MS, browser, open_page

pytestmark = pytest.mark.anyio
__all__ = ["browser"]  # the fixture, shared with test_ui.py

PROFILES = [
    ModelProfile(id="huge", harness="synthetic", source="synthetic:bytes=4GiB"),
    ModelProfile(id="slow", harness="synthetic", source="synthetic:bytes=1GiB,load_ms=4000"),
]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"name": "a", "memory_budget": "3GiB"}, tmp_path) as neuron:
        yield neuron


async def test_unservable_has_its_reason_and_no_load_button_and_loads_show_progress(
        node: NeuronProcess, browser: Any) -> None:
    from playwright.async_api import expect

    async with running_gateway([("a", node)], PROFILES) as gw:
        page, problems = await open_page(browser, f"{gw.url}/ui?interval=0.3")
        huge = page.locator('#catalogue tr[data-model="huge"]')
        await expect(huge).to_contain_text("unservable", timeout=WAIT_MS)
        await expect(huge).to_contain_text("budget is only 3.00 GiB")
        await expect(huge.locator('button[data-action="load"]')).to_have_count(0)
        slow = page.locator('#catalogue tr[data-model="slow"]')
        await expect(slow.locator('button[data-action="load"]')).to_have_count(1)

        loading = asyncio.ensure_future(gw.client.post("/admin/models/slow/load"))
        try:
            await expect(page.locator("#loads")).to_contain_text(
                "loading slow on a", timeout=WAIT_MS)
            # Progress along the way: neither 0% nor done.
            await expect(page.locator("#loads")).to_contain_text(
                re.compile(r"\b[1-9][0-9]?% \("), timeout=WAIT_MS)
            assert (await loading).status_code == 200
        finally:
            if not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
        assert problems == []
