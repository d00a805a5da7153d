"""review.jsonl: appends never lose a line, the latest decision per record wins at export."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from datagen.records import Record, RecordMeta
from datagen.review import append_decision, apply_review, latest_decisions, read_decisions


def _rec(i: int, **meta) -> Record:
    return Record(id=f"r{i}", instruction=f"task {i}", output=f"answer {i}", meta=RecordMeta(**meta))


def test_concurrent_appends_keep_every_decision(tmp_path: Path) -> None:
    def reviewer(name: str) -> None:
        for i in range(40):
            append_decision(tmp_path, f"r{i}", "accept", stage="quality", who=name)

    threads = [threading.Thread(target=reviewer, args=(f"w{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "review.jsonl").read_text().splitlines()
    assert len(lines) == 160 and all(json.loads(line)["decision"] == "accept" for line in lines)


def test_latest_decision_wins_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    append_decision(tmp_path, "r1", "reject", stage="quality", who="a")
    append_decision(tmp_path, "r1", "accept", stage="quality", who="b")
    with open(tmp_path / "review.jsonl", "ab") as handle:
        handle.write(b'{"id": "r2", "decis')  # a crash mid-write
    assert len(read_decisions(tmp_path)) == 2 and latest_decisions(tmp_path)["r1"]["who"] == "b"


def test_apply_reject_edit_restore_unmatched(tmp_path: Path) -> None:
    (tmp_path / "dedup").mkdir()
    gone = _rec(9, drop_reason="exact_duplicate")
    (tmp_path / "dedup" / "dropped.jsonl").write_text(gone.model_dump_json() + "\n")
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": [{"label": "dedup"}, {"label": "quality"}]}))
    append_decision(tmp_path, "r1", "reject", stage="quality", who="a")
    append_decision(tmp_path, "r2", "edit", stage="quality", who="a", fields={"output": "<b>fixed</b>", "id": "x"})
    append_decision(tmp_path, "r9", "accept", stage="evol_instruct", who="a")  # seen earlier, dropped at dedup
    append_decision(tmp_path, "r404", "accept", stage="quality", who="a")
    records, counts = apply_review([_rec(1), _rec(2), _rec(3)], tmp_path)
    assert [r.id for r in records] == ["r2", "r3", "r9"]
    assert records[0].output == "<b>fixed</b>" and records[0].instruction == "task 2"
    assert records[2].meta.drop_reason is None
    assert counts == {"rejected": 1, "edited": 1, "restored": 1, "unmatched": 1}
