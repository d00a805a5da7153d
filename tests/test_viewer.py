"""`datagen view` over real sockets: pages, filters, search, lineage, candidates, escaping,
the access token, and review decisions that the next run's export honours without LLM calls."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from review_run import make_run
from viewer_server import serving


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scripted_module_server) -> Path:
    return make_run(tmp_path_factory.mktemp("view"), scripted_module_server.base_url)


@pytest.fixture(scope="module")
def site(run_dir: Path):
    from datagen.viewer import build_app

    with serving(build_app(run_dir)) as url:
        yield url


def get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode("utf-8"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8"), dict(err.headers)


def post(url: str, fields: dict[str, str]) -> int:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.build_opener(NoRedirect).open(urllib.request.Request(url, data=data), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def rowids(page: str) -> list[int]:
    return [int(x) for x in re.findall(r'class="open" href="/record/(\d+)"', page)]


def test_home_shows_charts_and_funnel(site: str) -> None:
    status, page, headers = get(site + "/")
    assert status == 200 and "<svg" in page and "Funnel" in page
    assert "exact_duplicate" in page and 'class="reason"' in page
    assert "default-src 'none'" in headers["content-security-policy"]


def test_filters_and_search(site: str, run_dir: Path) -> None:
    _, page, _ = get(site + "/records?status=dropped&reason=exact_duplicate")
    ids = rowids(page)
    assert len(ids) == 1 and "1 records" in page
    _, everything, _ = get(site + "/records")
    total = int(re.search(r'id="total">(\d+) records', everything).group(1))
    kept = sum(1 for line in (run_dir / "quality" / "kept.jsonl").read_text().splitlines() if line)
    _, quality, _ = get(site + "/records?stage=quality&status=kept")
    assert f'id="total">{kept} records' in quality and total > kept
    _, found, _ = get(site + "/records?q=" + urllib.parse.quote("topic number 3"))
    assert rowids(found) and all("topic number 3" in get(f"{site}/record/{i}")[1] for i in rowids(found))
    _, odd, _ = get(site + "/records?q=" + urllib.parse.quote('AND " * NEAR('))  # FTS syntax is text
    assert 'id="total">0 records' in odd
    _, scored, _ = get(site + "/records?min_score=8.5&max_score=10")  # the scripted judge gives 9
    _, low, _ = get(site + "/records?max_score=8.4")
    scored_total = int(re.search(r'id="total">(\d+) records', scored).group(1))
    assert 0 < scored_total < total and 'id="total">0 records' in low  # unscored rows match no range
    status, bad, _ = get(site + "/records?min_score=abc")
    assert status == 200 and "min_score: not a number" in bad


def test_record_page_lineage_diff_candidates_calls(site: str) -> None:
    _, page, _ = get(site + "/records?stage=distill&status=kept&source=evol_instruct")
    rowid = rowids(page)[0]
    status, record, _ = get(f"{site}/record/{rowid}")
    assert status == 200
    lineage = record.split('id="lineage"')[1].split("</table>")[0]
    stages = re.findall(r"<td>(input|evol_instruct|distill|dedup|quality)</td>", lineage)
    assert stages[0] == "input" and "evol_instruct" in stages and "distill" in stages
    assert "<del>" in record and "<ins>" in record  # evolved instruction against its parent
    candidates = record.split('id="candidates"')[1].split("</table>")[0]
    assert candidates.count("<tr") == 3 and "(kept)" in candidates
    calls = record.split('id="calls"')[1].split("</table>")[0]
    assert "openai:test" in calls


def test_generated_html_is_text(site: str) -> None:
    _, page, _ = get(site + "/records?q=onerror")
    ids = rowids(page)
    assert ids and "<script>" not in page and "&lt;script&gt;" in page
    _, record, _ = get(f"{site}/record/{ids[0]}")
    assert "<script>window" not in record and "<img src=x" not in record
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in record
    assert 'href="javascript:' not in record


def test_access_token(run_dir: Path) -> None:
    from datagen.viewer import build_app

    with serving(build_app(run_dir, access_token="s3cret")) as url:
        assert get(url + "/")[0] == 401
        assert get(url + "/records?token=wrong")[0] == 401
        status, _, headers = get(url + "/?token=s3cret")
        assert status == 200 and "datagen_view_token=s3cret" in headers.get("set-cookie", "")


def test_review_decisions_change_the_next_export_without_llm_calls(site: str, run_dir: Path,
                                                                   scripted_module_server) -> None:
    from review_run import run_config

    from datagen.pipeline import Pipeline
    from datagen.pipeline_config import validate_config

    _, page, _ = get(site + "/records?stage=quality&status=kept")
    reject, edit = rowids(page)[:2]
    _, dropped_page, _ = get(site + "/records?status=dropped&reason=exact_duplicate")
    restore = rowids(dropped_page)[0]
    token = re.search(r'name="form_token" value="([^"]+)"', get(f"{site}/record/{reject}")[1]).group(1)
    assert post(f"{site}/record/{reject}/review", {"decision": "reject"}) == 403  # no form token
    assert post(f"{site}/record/{reject}/review", {"decision": "accept", "form_token": token, "who": "ann"}) == 303
    assert post(f"{site}/record/{reject}/review", {"decision": "reject", "form_token": token, "who": "ann"}) == 303
    assert post(f"{site}/record/{edit}/review", {"decision": "edit", "form_token": token, "who": "bob",
                                                  "instruction": "Edited <b>by hand</b>", "output": "A new answer."}) == 303
    assert post(f"{site}/record/{restore}/review", {"decision": "accept", "form_token": token, "who": "cy"}) == 303
    lines = [json.loads(x) for x in (run_dir / "review.jsonl").read_text().splitlines()]
    assert [x["decision"] for x in lines] == ["accept", "reject", "edit", "accept"]  # history kept
    assert {x["who"] for x in lines} == {"ann", "bob", "cy"} and all(x["when"] for x in lines)
    assert "reject" in get(f"{site}/record/{reject}")[1].split('id="review"')[1]

    before = json.loads((run_dir / "export" / "alpaca.json").read_text())
    requests = scripted_module_server.stats.requests
    config = validate_config(run_config(scripted_module_server.base_url, Path(str(run_dir.parent / "in.jsonl"))),
                             "review.yaml")
    Pipeline(config).run(run_dir=run_dir, progress=False)
    assert scripted_module_server.stats.requests == requests  # not one new LLM call
    after = json.loads((run_dir / "export" / "alpaca.json").read_text())
    assert len(after) == len(before)  # one rejected, one restored
    assert "Edited <b>by hand</b>" in [r["instruction"] for r in after]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["review"] == {"rejected": 1, "edited": 1, "restored": 1}
    assert "## Human review" in (run_dir / "export" / "README.md").read_text()


def test_report_html_shows_record_html_as_text(run_dir: Path) -> None:
    from datagen.report import build_report

    page = build_report(run_dir)
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    assert "<script>window" not in page and "<img src=x" not in page and 'href="javascript:' not in page


def test_report_cells_are_cut_before_escaping() -> None:
    from datagen.report import _templates

    cell = _templates().from_string("{{ text|cell(3) }}").render(text="a&&&&b")
    assert cell == "a&amp;&amp;…"  # whole entities only


def test_view_command_needs_the_printed_token_off_loopback(run_dir: Path) -> None:
    """`datagen view --host` (here 127.0.0.2, not the loopback name) prints a URL with a token
    and refuses requests without it."""
    import socket
    import subprocess
    import sys
    import time

    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    port = sock.getsockname()[1]
    sock.close()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "view", str(run_dir), "--host", "127.0.0.2",
                             "--port", str(port), "--no-browser"], cwd=root, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(root)})
    try:
        url, status = "", None
        while not url:
            line = proc.stderr.readline()
            assert line, "datagen view exited before printing its URL"
            url = line.split("datagen view: ")[1].split()[0] if "datagen view: " in line else ""
        assert "?token=" in url and url.startswith(f"http://127.0.0.2:{port}/")
        for _ in range(100):
            try:
                status = get(url)[0]
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200
        assert get(url.split("?")[0] + "records")[0] == 401
    finally:
        proc.terminate()
        proc.wait(10)
