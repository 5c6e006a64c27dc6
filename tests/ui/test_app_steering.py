"""Browser test of the Steering page: open it on a feature from the URL, move the feature's
coefficient slider, generate, and see the baseline and steered continuations side by side.

The app is served with its own registered SAE (a constructed TopK SAE on SmolLM2 layer 15,
written to a temporary SAE root), so the test does not depend on which SAEs are shipped.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.conftest import served_app

pytestmark = [pytest.mark.ui, pytest.mark.slow]

SAE_NAME = "ui-test-sae"
SITE = "blocks.15.hook_resid_post"


@pytest.fixture(scope="module")
def steering_app_url(tmp_path_factory):
    """Serve the app on a free port with a test SAE registered through WORKBENCH_SAE_DIRS."""
    from workbench.sae import SaeConfig, create_sae, save_sae

    root = tmp_path_factory.mktemp("saes")
    cfg = SaeConfig("topk", 576, 256, k=8, site=SITE, model_name="smollm2-135m")
    save_sae(create_sae(cfg), root / "smollm2-135m" / SAE_NAME)
    env = {**os.environ, "WORKBENCH_SAE_DIRS": str(root), "WORKBENCH_APP_MODEL": "smollm2-135m"}
    with served_app(env, str(root / "app.log")) as url:
        yield url


def test_slider_generate_shows_both_continuations(page, steering_app_url):
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    feature = f"smollm2-135m/{SITE}/{SAE_NAME}/3"
    page.goto(f"{steering_app_url}?page=steering&feature={feature}", wait_until="networkidle")
    # the feature from the URL is chosen, with its coefficient slider
    expect(page.get_by_text("coefficient of feature 3").first).to_be_visible(timeout=60000)
    handle = page.locator(".noUi-handle").last  # the feature's slider (the new-tokens slider comes first)
    handle.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")  # 1.0 -> 1.25 in steps of 0.05
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_text("tokens changed").first).to_be_visible(timeout=90000)
    expect(page.get_by_text("Baseline").first).to_be_visible()
    # the steered side names the coefficient the slider set
    expect(page.get_by_text("feature 3 x 1.25 (norm)").first).to_be_visible()
    expect(page.get_by_text("tokens generated").first).to_be_visible()
    assert page.locator("mark.wb-changed").count() > 0  # changed tokens are marked (css pierces shadow DOM)
    assert "Traceback" not in page.content()
    assert not failed, f"requests failed (everything must be served locally): {failed}"


def test_bad_feature_in_url_shows_a_message(page, steering_app_url):
    page.goto(f"{steering_app_url}?page=steering&feature=smollm2-135m/{SITE}/{SAE_NAME}/99999",
              wait_until="networkidle")
    expect(page.get_by_text("feature 99999 does not exist").first).to_be_visible(timeout=60000)
    assert "Traceback" not in page.content()
