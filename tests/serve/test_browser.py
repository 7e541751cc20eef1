"""The web page in a real browser: Debian's chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from limbscan.serve import background_server, create_app


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory) -> Path:
    from limbscan.bundle import export_bundle

    _, run = tiny_run
    return export_bundle(run, tmp_path_factory.mktemp("serve_browser") / "m.limbscan", gate=None)


def test_page_uploads_ranks_and_shows_an_overlay(browser, bundle, tiny_run, tmp_path):
    from playwright.sync_api import expect

    root, _ = tiny_run
    # Names a patient could be recognised by stay in the page; the server is sent "upload".
    images = []
    for source, name in zip(sorted((root / "images").glob("*.png"))[:2], ["Doe^John.png", "second.png"]):
        images.append(tmp_path / name)
        shutil.copyfile(source, images[-1])
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")

    app = create_app(bundle, workdir=tmp_path / "work")
    received: list[bytes] = []  # every request body, as the server got it

    async def spy(scope, receive, send):
        async def tee():
            message = await receive()
            if message["type"] == "http.request":
                received.append(message.get("body", b""))
            return message

        await app(scope, tee, send)

    with background_server(spy) as base:
        page = browser.new_page()
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(base) or r.url.startswith("blob:") else outside.append(r.url))
        failures: list[str] = []
        page.on("pageerror", lambda err: failures.append(str(err)))
        page.goto(base + "/")
        # Locator waits, not wait_for_function: the page's CSP (kept on here) forbids the eval it needs.
        expect(page.locator("#model-info")).to_contain_text("model: ")
        # which scenario is the default, and why (the bundle's best held-out validation AUC)
        from limbscan.bundle import read_manifest

        expect(page.locator("#model-reason")).to_have_text(f"default {read_manifest(bundle)['default_reason']}")

        page.set_input_files("#picker", [str(p) for p in images])
        done = page.locator("#worklist tbody tr[data-state='done']")
        done.nth(1).wait_for(timeout=60_000)
        assert done.count() == 2
        probabilities = [float(v) for v in done.evaluate_all("rows => rows.map(r => r.dataset.probability)")]
        assert probabilities == sorted(probabilities, reverse=True)
        names = done.locator("td.name").all_text_contents()
        assert sorted(names) == ["Doe^John.png", "second.png"]

        page.set_input_files("#picker", [str(bad)])
        error = page.locator("#worklist tbody tr[data-state='error']")
        error.wait_for(timeout=30_000)
        assert "not a DICOM, PNG or JPEG" in error.inner_text()
        # Errors go below the results; the ranked rows stay on top.
        assert page.locator("#worklist tbody tr").last.get_attribute("data-state") == "error"

        done.first.click()
        overlay = page.locator("#overlay")
        expect(overlay).to_be_visible(timeout=30_000)
        expect(overlay).to_have_attribute("src", re.compile(r"^blob:"))
        expect(overlay).to_have_js_property("complete", True)
        assert overlay.evaluate("img => img.naturalWidth") > 0
        assert page.locator("#details").inner_text().strip()
        assert done.first.get_attribute("aria-selected") == "true"
        page.close()
    assert not outside, outside
    sent = b"".join(received)
    assert sent.count(b'filename="upload"') == 3
    assert b"Doe" not in sent and b"second" not in sent and b"notes" not in sent
    assert not failures, failures


def test_page_asks_for_the_token_and_keeps_it_for_the_session(browser, bundle, tiny_run, tmp_path):
    from playwright.sync_api import expect

    root, _ = tiny_run
    image = sorted((root / "images").glob("*.png"))[0]
    app = create_app(bundle, token="let-me-in", workdir=tmp_path / "work")
    with background_server(app) as base:
        page = browser.new_page()
        page.goto(base + "/")
        expect(page.locator("#token-form")).to_be_visible()
        page.set_input_files("#picker", [str(image)])
        row = page.locator("#worklist tbody tr")
        expect(row).to_have_attribute("data-state", "queued")  # held until there is a token
        page.fill("#token", "wrong")
        page.click("#token-form button")
        expect(page.locator("#token-message")).to_contain_text("not accepted")
        page.fill("#token", "let-me-in")
        page.click("#token-form button")
        expect(row).to_have_attribute("data-state", "done", timeout=60_000)
        expect(page.locator("#model-info")).to_contain_text("model: ")
        assert page.evaluate("() => sessionStorage.getItem('limbscan.token')") == "let-me-in"
        row.click()
        expect(page.locator("#overlay")).to_be_visible(timeout=30_000)
        page.close()


def test_rows_show_their_level_as_a_badge(browser, bundle, tiny_run, tmp_path, with_operating_points):
    from playwright.sync_api import expect

    from limbscan.inference import load

    root, _ = tiny_run
    images = sorted((root / "images").glob("*.png"))[:2]
    low, high = sorted(p.probability for p in load(bundle).predict(images, masks=False))
    assert low < high
    # the higher image likely abnormal, the lower one suspected only
    app = create_app(with_operating_points(bundle, (low + high) / 2, low), workdir=tmp_path / "work")
    with background_server(app) as base:
        page = browser.new_page()
        page.goto(base + "/")
        expect(page.locator("#model-info")).to_contain_text("suspected ≥ ")
        page.set_input_files("#picker", [str(p) for p in images])
        done = page.locator("#worklist tbody tr[data-state='done']")
        done.nth(1).wait_for(timeout=60_000)
        assert done.evaluate_all("rows => rows.map(r => r.dataset.level)") == ["likely", "suspected"]
        assert done.locator("td.finding .badge").all_text_contents() == ["likely abnormal", "suspected"]
        assert done.nth(1).locator(".badge.suspected").count() == 1
        expect(page.locator("#summary")).to_contain_text("1 likely abnormal · 1 suspected")
        done.nth(1).click()
        expect(page.locator("#details")).to_contain_text("Suspected from")
        # a suspected image shows where to look, and whose boxes they are
        expect(page.locator("#details")).to_contain_text(re.compile(r"Lesion proposals\s*\d+, from the (detector|cascade)"))
        expect(page.locator("#viewer-caption")).to_contain_text(re.compile(r"lesion proposals from the (detector|cascade)"))
        page.close()


def test_page_groups_a_study_and_lists_an_image_it_did_not_analyse(browser, bundle, phantoms_of_one_study,
                                                                  pydicom_data, tmp_path):
    """Two DICOM images of one study come under one study row; a chest CR gets 'not analysed' with
    the reason, after every scored image, and opens no overlay."""
    from playwright.sync_api import expect

    chest = pydicom_data("RG1_UNCI.dcm")
    app = create_app(bundle, workdir=tmp_path / "work")
    with background_server(app) as base:
        page = browser.new_page()
        failures: list[str] = []
        page.on("pageerror", lambda err: failures.append(str(err)))
        page.goto(base + "/")
        page.set_input_files("#picker", [str(chest), *map(str, phantoms_of_one_study)])
        rows = page.locator("#worklist tbody tr")
        page.locator("#worklist tbody tr[data-state='done']").nth(2).wait_for(timeout=60_000)
        kinds = rows.evaluate_all("rows => rows.map(r => r.classList.contains('study') ? 'study' : r.dataset.level)")
        assert kinds[0] == "study" and kinds[-1] == "out_of_scope", kinds  # the study first, the chest last
        assert rows.first.locator("td.num").inner_text() == "1"
        assert rows.last.locator("td.num").inner_text() == ""  # no rank among the scored images
        expect(rows.last).to_contain_text("not analysed")
        expect(rows.last).to_contain_text("BodyPartExamined names the chest")
        expect(page.locator("#summary")).to_contain_text("1 not analysed")
        rows.last.click()
        expect(page.locator("#viewer-caption")).to_contain_text("Not analysed: BodyPartExamined names the chest")
        expect(page.locator("#overlay")).to_be_hidden()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.close()
    assert not failures, failures


@pytest.fixture
def phantoms_of_one_study(tiny_run, tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    root, _ = tiny_run
    study, out = generate_uid(), []
    for i, source in enumerate(sorted((root / "images").glob("*.dcm"))[:2]):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(tmp_path / f"view{i}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out
