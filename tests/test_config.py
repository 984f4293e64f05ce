"""Config loading: validation, typo detection, path resolution, schema and reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from geofuse.cli import app
from geofuse.config import dump_config, load_config, parse_config
from geofuse.docs import config_reference_markdown
from geofuse.errors import ConfigError, DataNotFoundError

MINIMAL = {
    "name": "t",
    "modalities": [
        {"name": "s2", "files": ["s2.tif"], "bands": ["B2", "B3", "B4"]},
        {"name": "dem", "files": ["dem.tif"], "bands": ["elevation"], "resampling": "cubic"},
    ],
    "labels": {"path": "labels.geojson"},
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_minimal_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.resolve("s2.tif") == tmp_path.resolve() / "s2.tif"
    assert cfg.stack_path == tmp_path.resolve() / "work" / "stack.tif"
    assert cfg.patches_path.name == "patches.h5"
    assert cfg.band_names == ["B2", "B3", "B4", "elevation"]


def test_typo_in_key_names_the_key_and_suggests_the_fix(tmp_path: Path) -> None:
    data = {**MINIMAL, "modalities": [dict(MINIMAL["modalities"][0], resamplng="nearest")]}
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    msg = str(info.value)
    assert "modalities.0.resamplng" in msg and "did you mean 'resampling'" in msg
    assert str(tmp_path) in msg


def test_invalid_value_names_key_and_value(tmp_path: Path) -> None:
    data = {**MINIMAL, "extract": {"patch_size": 0}}
    with pytest.raises(ConfigError, match=r"extract\.patch_size = 0"):
        load_config(_write(tmp_path, data))


def test_duplicate_band_names_are_rejected(tmp_path: Path) -> None:
    data = dict(MINIMAL)
    data["modalities"] = [MINIMAL["modalities"][0], dict(MINIMAL["modalities"][0], name="s2b")]
    with pytest.raises(ConfigError, match="repeated"):
        load_config(_write(tmp_path, data))


def test_unknown_train_modality_is_rejected(tmp_path: Path) -> None:
    data = {**MINIMAL, "train": {"modalities": ["s1"]}}
    with pytest.raises(ConfigError, match="unknown modality 's1'"):
        load_config(_write(tmp_path, data))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_missing_modality_file_is_named(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL, tmp_path)
    with pytest.raises(DataNotFoundError, match=r"s2\.tif"):
        cfg.modality_files(cfg.modalities[0])
    (tmp_path / "a.tif").write_bytes(b"")
    cfg.modalities[0].files = ["*.tif"]
    assert cfg.modality_files(cfg.modalities[0]) == [tmp_path.resolve() / "a.tif"]


def test_dump_and_reload_roundtrip(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL, tmp_path)
    out = tmp_path / "copy.yaml"
    dump_config(cfg, out)
    again = load_config(out)
    assert again.model_dump() == cfg.model_dump()


def test_reference_lists_every_section() -> None:
    text = config_reference_markdown()
    for key in ("modalities", "extract", "splits", "train", "train.model", "guards", "patch_size"):
        assert f"`{key}`" in text


def test_cli_config_check_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = _write(tmp_path, MINIMAL)  # a valid schema, but no input file exists (preflight)
    missing = runner.invoke(app, ["config", "--check", str(good)])
    assert missing.exit_code == 2 and "3 problems" in missing.output  # exit 0: test_preflight
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "extrat": {}}))
    result = runner.invoke(app, ["config", "--check", str(bad)])
    assert result.exit_code == 2
    assert "extrat" in result.output and "Traceback" not in result.output
    schema = runner.invoke(app, ["config", "--schema"])
    assert schema.exit_code == 0 and '"modalities"' in schema.output


def test_docs_config_reference_is_up_to_date() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text().strip() == config_reference_markdown().strip(), (
        "docs/config.md is stale: run `geofuse config --reference > docs/config.md`"
    )


def test_readme_example_config_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("A minimal study config", 1)[1].split("```yaml", 1)[1].split("```")[0]
    cfg = parse_config(yaml.safe_load(block), tmp_path, source="README.md")
    assert cfg.train.model.name == "late_fusion" and cfg.ablation.folds == 5
