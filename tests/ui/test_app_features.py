"""Browser tests of the Features page on the shipped SAE of smollm2-135m (batchtopk-l15-8k):
search a token, open a feature from the list, see its highlighted contexts; open a feature by
URL, test it on your own text; bad input shows a message, never a stack trace."""

import pytest
from playwright.sync_api import expect

from tests.missing_inputs import skip_or_fail

pytestmark = [pytest.mark.ui, pytest.mark.slow]

FEATURE_ROOT = "smollm2-135m/blocks.15.hook_resid_post/batchtopk-l15-8k"


@pytest.fixture(scope="module", autouse=True)
def shipped_store():
    """The tests need batchtopk-l15-8k and its feature store (data/, or $WORKBENCH_SAE_DIRS in development)."""
    from workbench.catalog import list_saes

    entries = [e for e in list_saes("smollm2-135m") if e.name == "batchtopk-l15-8k"]
    if not entries or not entries[0].feature_store.is_file():
        message = ("NO FEATURE STORE: data/features/smollm2-135m/batchtopk-l15-8k.sqlite is missing; build it with "
                   "scripts/build_feature_stores.py")
        skip_or_fail(message)


def test_search_a_token_open_a_feature_see_its_contexts(page, app_url):
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(app_url + "?page=features", wait_until="networkidle")
    expect(page.get_by_text("latents of batchtopk-l15-8k").first).to_be_visible(timeout=90000)
    box = page.get_by_placeholder("a token", exact=False)
    box.fill(" Python")
    box.press("Enter")
    expect(page.get_by_text("latents firing most on", exact=False).first).to_be_visible(timeout=60000)
    page.locator(".slick-row").first.locator(".slick-cell").nth(1).click()
    expect(page.get_by_text("Top activating contexts").first).to_be_visible(timeout=60000)
    assert page.locator(".wbf-peak").count() >= 5
    colours = page.locator(".wbf-tok").evaluate_all("spans => spans.map(s => s.style.background)")
    assert sum("rgba(242, 120, 0" in c for c in colours) >= 5  # highlighted tokens
    assert f"feature={FEATURE_ROOT.replace('/', '%2F')}" in page.url or f"feature={FEATURE_ROOT}" in page.url
    assert not failed, f"requests failed (everything must be served locally): {failed}"
    assert "Traceback" not in page.content()


def test_feature_url_try_text_and_bad_input(page, app_url):
    page.goto(app_url + f"?page=features&feature={FEATURE_ROOT}/123", wait_until="networkidle")
    expect(page.get_by_text("Feature 123").first).to_be_visible(timeout=90000)
    page.get_by_text("Try your own text", exact=True).first.click()
    box = page.get_by_placeholder("Type a text to see this latent on it")
    box.fill("Python is a programming language.")
    box.press("Tab")  # commit the value as a user leaving the box does
    summary = page.get_by_text("tokens; the first token (attention sink)", exact=False).first
    # Under load, playwright's instant fill can reach the server after the click; a user's
    # keystrokes never do. Click again if the first click saw an empty box.
    for attempt in range(3):
        page.get_by_text("Show activations", exact=True).first.click()
        try:
            expect(summary).to_be_visible(timeout=30000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    page.goto(app_url + f"?page=features&feature={FEATURE_ROOT}/99999", wait_until="networkidle")
    expect(page.get_by_text("out of range").first).to_be_visible(timeout=90000)
    box = page.get_by_placeholder("a token", exact=False)
    box.fill("zzqqxx")
    box.press("Enter")
    expect(page.get_by_text("no token 'zzqqxx' occurs").first).to_be_visible(timeout=60000)
    assert "Traceback" not in page.content()
