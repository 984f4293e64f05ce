"""history.csv: one row appended per epoch, a row cut short dropped, resumed epochs replaced."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from geofuse.rundir import HISTORY_COLUMNS, append_history, read_history, write_history
from geofuse.training.train import HistoryWriter


def _row(epoch: int, loss: float) -> dict[str, float | int | None]:
    row: dict[str, float | int | None] = {c: 0.25 for c in HISTORY_COLUMNS}
    row.update(epoch=epoch, val_loss=loss, train_loss=None)
    return row


def test_rows_appended_one_per_epoch_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    rows = [_row(0, 1.5), _row(1, math.nan), _row(2, 0.1 + 0.2)]
    for row in rows:
        append_history(path, row)
    text = path.read_text()
    assert text.count(HISTORY_COLUMNS[0]) == 1 and len(text.splitlines()) == 4
    got = read_history(path)
    assert [r["epoch"] for r in got] == [0, 1, 2]
    assert got[2] == rows[2] and got[0] == rows[0] and got[1]["train_loss"] is None
    assert math.isnan(got[1]["val_loss"])
    path.write_text("")  # an empty file gets its header again
    append_history(path, rows[0])
    assert read_history(path) == [rows[0]]


def test_a_row_cut_short_by_a_crash_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    write_history(path, [_row(0, 1.0), _row(1, 0.5)])
    whole = path.read_text()
    for cut in (whole[: whole.rindex(",")], whole[:-3], whole[:-1]):  # no line end: cut short
        path.write_text(cut)
        assert [r["epoch"] for r in read_history(path)] == [0]


def test_resumed_training_replaces_the_rows_from_its_start_epoch(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    write_history(path, [_row(e, 1.0 / (e + 1)) for e in range(4)])  # killed after epoch 3,
    writer = HistoryWriter(path)  # but last.ckpt was written after epoch 1
    trainer = SimpleNamespace(current_epoch=2, callback_metrics={"val_loss": 0.7},
                              optimizers=[SimpleNamespace(param_groups=[{"lr": 0.01}])],
                              is_global_zero=True)
    writer.on_train_start(trainer, None)  # type: ignore[arg-type]
    assert [r["epoch"] for r in read_history(path)] == [0, 1]
    writer.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    writer.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    rows = read_history(path)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[2]["val_loss"] == 0.7 and rows[2]["lr"] == 0.01 and rows[2]["train_loss"] is None
