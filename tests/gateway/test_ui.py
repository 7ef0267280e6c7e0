"""The /ui dashboard in headless Chromium, against a real gateway and neuron.

The browser is Debian's chromium (scripts/test_packages.sh), driven by Playwright's
Python package; Playwright's own browser downloads are never used. Screenshots go to
.artifacts/ (gitignored)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cortex import ModelProfile
from cortex.defaults import BUNDLED_GEMMA

from ..conftest import ROOT, NeuronProcess
from ..gateway_support import complete, neuron_models, reset, running_gateway, wait_until
from ..serve_support import synthetic_neuron

pytestmark = pytest.mark.anyio

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / ".artifacts"
MODEL = BUNDLED_GEMMA.id
WAIT_MS = 60_000  # how long a condition may take to show before the test fails


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async_api = pytest.importorskip("playwright.async_api",
                                    reason="pip install playwright (the dev extra)")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("no chromium: run scripts/test_packages.sh (apt-get install chromium)")
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A page on `url`, and the list its console errors and uncaught exceptions go to
    (a CSP violation of the page's own code shows up there)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(url)
    return page, problems


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           cache_dir: Path) -> Iterator[NeuronProcess]:
    process = NeuronProcess({"name": "a", "cache_dir": str(cache_dir)},
                            tmp_path_factory.mktemp("ui"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.mark.model
async def test_dashboard_shows_the_fleet_and_its_buttons_unload_load_and_pin(
        neuron: NeuronProcess, browser: Any) -> None:
    from playwright.async_api import expect

    reset(neuron)
    async with running_gateway([("a", neuron)], [BUNDLED_GEMMA]) as gw:
        assert (await gw.client.post(f"/admin/models/{MODEL}/load")).status_code == 200
        assert (await complete(gw.client, MODEL, max_tokens=4)).status_code == 200
        page, problems = await open_page(browser, f"{gw.url}/ui?interval=0.3")

        row = page.locator(f'#loaded tr[data-model="{MODEL}"][data-node="a"]')
        await expect(row.locator('[data-testid="state"]')).to_have_text("ready",
                                                                        timeout=WAIT_MS)
        card = page.locator('.node[data-node="a"]')
        await expect(card).to_contain_text("up")
        await expect(card.locator('[data-testid="budget-a"]')).to_contain_text("GiB")
        await expect(page.locator("#requests-total")).to_have_text("1")
        assert float(await page.locator("#tps-out").inner_text()) > 0
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "ui-dashboard.png"), full_page=True)

        await row.locator('button[data-action="unload"]').click()
        await expect(row).to_have_count(0, timeout=WAIT_MS)
        assert await neuron_models(neuron) == {}
        listed = page.locator(f'#catalogue tr[data-model="{MODEL}"]')
        await expect(listed).to_contain_text("available", timeout=WAIT_MS)

        await listed.locator('button[data-action="load"]').click()
        await expect(row.locator('[data-testid="state"]')).to_have_text("ready",
                                                                        timeout=WAIT_MS)
        assert (await neuron_models(neuron))[MODEL]["state"] == "ready"

        await row.locator('button[data-action="pin"]').click()
        await expect(row.locator('button[data-action="unpin"]')).to_have_count(1,
                                                                             timeout=WAIT_MS)
        await expect(row.locator('button[data-action="unload"]')).to_have_count(0)
        entry = (await gw.client.get(f"/v1/models/{MODEL}")).json()
        assert entry["pinned"] is True
        await page.screenshot(path=str(ARTIFACTS / "ui-pinned.png"), full_page=True)

        await card.locator('button[data-action="drain"]').click()
        try:
            await expect(card.locator(".state-draining")).to_have_text("draining",
                                                                       timeout=WAIT_MS)
            fleet = (await gw.client.get("/admin/fleet")).json()
            assert fleet["nodes"][0]["draining"] is True
            await card.locator('button[data-action="undrain"]').click()
            await expect(card.locator(".state-up")).to_have_text("up", timeout=WAIT_MS)
        finally:
            await gw.client.post("/admin/nodes/a/undrain")  # the module's neuron is shared
        await expect(card.locator('button[data-action="drain"]')).to_have_count(1)
        assert problems == []


async def test_dashboard_asks_for_the_admin_key_and_keeps_it_for_the_tab(
        browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "admin-key-for-the-ui-test"
    monkeypatch.setenv("CORTEX_ADMIN_KEYS", secret)
    async with running_gateway([], []) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as anonymous:
            assert (await anonymous.get("/admin/fleet")).status_code == 401
            for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
                served = await anonymous.get(path)
                assert served.status_code == 200 and secret not in served.text
                assert "script-src 'self'" in served.headers["content-security-policy"]
            assert (await anonymous.get("/ui")).status_code == 307
            assert (await anonymous.get("/ui/../admin/fleet")).status_code in (401, 404)
            assert (await anonymous.get("/ui/secrets.txt")).status_code == 404

        page, problems = await open_page(browser, f"{gw.url}/ui")
        from playwright.async_api import expect

        form = page.locator("#key-form")
        await expect(form).to_be_visible(timeout=WAIT_MS)
        await page.fill("#key-input", "wrong")
        await page.click('#key-form button[type="submit"]')
        await expect(page.locator("#key-reason")).to_contain_text("refused", timeout=WAIT_MS)

        await page.fill("#key-input", secret)
        await page.click('#key-form button[type="submit"]')
        await expect(page.locator("#summary")).to_contain_text("0/0 nodes up",
                                                               timeout=WAIT_MS)
        await expect(form).to_be_hidden()
        assert await page.evaluate("sessionStorage.getItem('cortex-admin-key')") == secret
        await page.reload()  # the same tab keeps the key
        await expect(page.locator("#summary")).to_contain_text("routing affinity",
                                                               timeout=WAIT_MS)
        await expect(form).to_be_hidden()
        # The refused key's 401s are the only console errors.
        assert all("401" in p for p in problems), problems


async def test_gpu_nodes_get_a_memory_bar_per_gpu(browser: Any) -> None:
    """No GPU here: the page is fed /admin/fleet in a GPU node's shape (as `neuron` with
    NVML reports it) from the status tests' fixture; everything else is the real gateway."""
    from playwright.async_api import Route, expect

    from ..cli.test_status_cli import gpu_fleet

    async with running_gateway([], []) as gw:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})

        async def fleet(route: Route) -> None:
            await route.fulfill(json=gpu_fleet())

        await page.route("**/admin/fleet", fleet)
        await page.goto(f"{gw.url}/ui")
        first = page.locator('[data-testid="gpu-gpu-1-0"]')
        await expect(first).to_contain_text("NVIDIA H100 80GB HBM3, 37% busy", timeout=WAIT_MS)
        await expect(first).to_contain_text("20.00 GiB / 80.00 GiB (25%)")
        assert await first.locator('[role="meter"]').get_attribute("aria-valuenow") == "25"
        second = page.locator('[data-testid="gpu-gpu-1-1"] [role="meter"]')
        assert await second.get_attribute("aria-valuenow") == "100"
        assert "full" in (await second.locator(".fill").get_attribute("class") or "")
        await expect(page.locator("#tps-out")).to_have_text("42.5")
        row = page.locator('#loaded tr[data-model="llama-70b"]')
        await expect(row).to_contain_text("42.5")
        # Busy: not idle, and the TTL's whole span ahead (as `cortex status` shows it).
        await expect(row.locator('[data-testid="idle"]')).to_have_text("\u2013")
        await expect(row.locator('[data-testid="until"]')).to_have_text("10m00s")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "ui-gpus.png"), full_page=True)


# --- activity log and playground, over a synthetic neuron (a token stream, no model) ------

SYN = ModelProfile(id="syn", source="synthetic:rate=100,tokens=24", harness="synthetic",
                   n_ctx=2048)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    process = synthetic_neuron(tmp_path_factory.mktemp("ui-synthetic"), name="s")
    try:
        yield process
    finally:
        process.stop()


async def test_activity_log_lists_recent_requests_with_their_numbers(
        synthetic: NeuronProcess, browser: Any) -> None:
    from playwright.async_api import expect

    async with running_gateway([("s", synthetic)], [SYN]) as gw:
        assert (await complete(gw.client, "syn", max_tokens=5)).status_code == 200
        missing = await gw.client.post("/v1/chat/completions", json={
            "model": "ghost", "messages": [{"role": "user", "content": "Hi"}]})
        assert missing.status_code == 404
        served, refused = sorted(gw.recorder.records, key=lambda r: r.status)
        page, problems = await open_page(browser, f"{gw.url}/ui/?interval=0.3#activity")

        log = page.locator("#activity")
        await expect(log).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#view-fleet")).to_be_hidden()
        row = log.locator(f'tr[data-request-id="{served.request_id}"]')
        await expect(row).to_contain_text("syn", timeout=WAIT_MS)
        cells = await row.locator("td").all_inner_texts()
        assert cells[1:7] == ["syn", "s", "openai", "200", str(served.prompt_tokens),
                              str(served.completion_tokens)]
        assert cells[7] == "\u2013" and cells[8].endswith(" s")  # no TTFT: not streamed
        bad = log.locator(f'tr[data-request-id="{refused.request_id}"]')
        await expect(bad.locator('[data-testid="status"]')).to_have_text("404")
        await expect(bad).to_contain_text("ghost")
        assert await bad.locator('[data-testid="status"]').get_attribute("class") \
            == "status-bad"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "ui-activity.png"), full_page=True)

        # GET /admin/requests is what the page shows: newest first.
        listed = (await gw.client.get("/admin/requests?limit=1")).json()["requests"]
        assert [r["request_id"] for r in listed] == [refused.request_id]
        assert (await gw.client.get("/admin/requests?limit=0")).status_code == 400
        assert problems == []


async def test_playground_streams_a_conversation_and_shows_ttft_and_tokens_per_second(
        synthetic: NeuronProcess, browser: Any) -> None:
    from playwright.async_api import expect

    async with running_gateway([("s", synthetic)], [SYN]) as gw:
        page, problems = await open_page(browser, f"{gw.url}/ui/?interval=0.3")
        await page.click('nav a[data-view="playground"]')
        await expect(page.locator("#view-playground")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#view-fleet")).to_be_hidden()
        await expect(page.locator('#pg-model option[value="syn"]')).to_have_count(
            1, timeout=WAIT_MS)
        await page.select_option("#pg-model", "syn")
        await page.fill("#pg-max", "12")

        answers = page.locator('#pg-log [data-role="assistant"]')
        await page.fill("#pg-input", "Hello there")
        await page.press("#pg-input", "Enter")
        await expect(answers).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#pg-send")).to_be_enabled(timeout=WAIT_MS)
        stats = page.locator("#pg-stats")
        await expect(stats).to_contain_text("TTFT")
        await expect(stats).to_contain_text("tokens/s")
        await expect(stats).to_contain_text("12 tokens")
        first = await answers.nth(0).locator("span").inner_text()
        assert len(first.split()) >= 5

        await page.fill("#pg-input", "Tell me more")
        await page.click("#pg-send")
        await expect(answers).to_have_count(2, timeout=WAIT_MS)
        await expect(page.locator("#pg-send")).to_be_enabled(timeout=WAIT_MS)

        async def both() -> bool:
            return len(gw.recorder.records) == 2

        await wait_until(both, timeout=30, what="the gateway records both turns")
        await expect(page.locator('#pg-log [data-role="user"]').nth(1)).to_contain_text(
            "Tell me more")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "ui-playground.png"), full_page=True)

        one, two = gw.recorder.records
        assert one.stream and two.stream and one.completion_tokens == 12
        # The second request carried the first question and its answer.
        assert two.prompt_tokens > one.prompt_tokens + one.completion_tokens
        # Both show up in the activity log, with a TTFT (streamed).
        await page.click('nav a[data-view="activity"]')
        row = page.locator(f'#activity tr[data-request-id="{two.request_id}"]')
        await expect(row).to_contain_text("syn", timeout=WAIT_MS)
        assert (await row.locator("td").nth(7).inner_text()).endswith(" s")
        assert problems == []


async def test_dashboard_works_under_a_mount_prefix(synthetic: NeuronProcess,
                                                    browser: Any) -> None:
    """Behind a proxy that mounts the gateway at /llm, the page's calls stay under /llm."""
    from playwright.async_api import expect

    async with running_gateway([("s", synthetic)], [SYN], mount="/llm") as gw:
        assert gw.url.endswith("/llm")
        page, problems = await open_page(browser, f"{gw.url}/ui?interval=0.3")
        assert page.url == f"{gw.url}/ui/?interval=0.3"  # the redirect kept the prefix
        await expect(page.locator("#summary")).to_contain_text("1/1 nodes up",
                                                               timeout=WAIT_MS)
        await expect(page.locator('#catalogue tr[data-model="syn"]')).to_contain_text(
            "syn")
        await page.click('nav a[data-view="playground"]')
        await page.select_option("#pg-model", "syn")
        await page.fill("#pg-max", "8")
        await page.fill("#pg-input", "Hi")
        await page.press("#pg-input", "Enter")
        await expect(page.locator("#pg-send")).to_be_enabled(timeout=WAIT_MS)
        await expect(page.locator("#pg-stats")).to_contain_text("8 tokens")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "ui-mounted.png"), full_page=True)

        async def recorded() -> bool:
            return len(gw.recorder.records) == 1

        await wait_until(recorded, timeout=30, what="the gateway records the chat")
        assert problems == []
