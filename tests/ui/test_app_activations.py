"""Browser test: the app loads on the default model and typing a text updates the heat map."""

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.ui, pytest.mark.slow]


def test_typing_a_text_updates_the_heatmap(page, app_url):
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(app_url, wait_until="networkidle")
    expect(page.get_by_text("Sparse Workbench").first).to_be_visible(timeout=60000)
    expect(page.get_by_text("10 tokens x 30 layers").first).to_be_visible(timeout=60000)
    before = page.locator("canvas").first.screenshot()
    box = page.locator("textarea").first
    box.fill("Paris is the capital of France and Rome is the capital of Italy.")
    box.press("Tab")
    expect(page.get_by_text("14 tokens x 30 layers").first).to_be_visible(timeout=60000)
    page.wait_for_timeout(500)
    after = page.locator("canvas").first.screenshot()
    assert before != after  # the heat map was redrawn
    assert not failed, f"requests failed (everything must be served locally): {failed}"


def test_page_url_and_no_stack_traces(page, app_url):
    page.goto(app_url + "?page=activations", wait_until="networkidle")
    box = page.locator("textarea").first
    expect(box).to_be_visible(timeout=60000)
    box.fill("x" * 10)
    box.fill("   ")
    box.press("Tab")
    expect(page.get_by_text("type some text first").first).to_be_visible(timeout=30000)
    assert "Traceback" not in page.content()
