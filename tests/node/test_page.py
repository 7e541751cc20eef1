"""The web page shows the node's worklist as images arrive over DICOM (Debian's chromium, Playwright)."""

from __future__ import annotations

from limbscan.node import Node, NodeConfig
from limbscan.serve import background_server, create_app


def test_the_page_adds_each_image_the_node_scores(browser, tiny_model, phantoms, tmp_path):
    from playwright.sync_api import expect
    from pynetdicom import AE

    node = Node(tiny_model, NodeConfig(out=tmp_path / "node", allowed=["SCU"], port=0)).start()
    app = create_app(tiny_model, node=node.config.out, decode_lock=node.decode_lock, workdir=tmp_path / "web")
    try:
        with background_server(app) as base:
            page = browser.new_page()
            failures: list[str] = []
            page.on("pageerror", lambda err: failures.append(str(err)))
            page.goto(base + "/")
            status = page.locator("#node-status")
            expect(status).to_contain_text("DICOM node LIMBSCAN", timeout=30_000)
            expect(status).to_contain_text("0 scored")

            ae = AE(ae_title="SCU")
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")
            assoc = ae.associate("127.0.0.1", node.port, ae_title="LIMBSCAN")
            for path in phantoms(2):
                assert int(assoc.send_c_store(path).Status) == 0
            assoc.release()
            done = page.locator("#worklist tbody tr[data-state='done']")
            done.nth(1).wait_for(timeout=60_000)  # no reload: the page asked the node again
            assert done.count() == 2
            expect(status).to_contain_text("2 scored")
            assert all(n.startswith("DICOM …") for n in done.locator("td.name").all_text_contents())
            done.first.click()
            overlay = page.locator("#overlay")
            expect(overlay).to_be_visible(timeout=30_000)
            expect(overlay).to_have_js_property("complete", True)
            assert overlay.evaluate("img => img.naturalWidth") > 0
            assert "SOP Instance UID" in page.locator("#details").inner_text()
            page.close()
        assert not failures, failures
    finally:
        node.stop()
