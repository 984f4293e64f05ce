"""Label points (field plots, GPS survey, Earth Engine training points): ``extract`` cuts one
patch centred on each point's pixel, groups neighbouring points for the splits, and a study
maps and assesses its scene against the held-out points."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import LineString, MultiPoint, Point

from geofuse.data.extract import extract_patches
from geofuse.data.patchset import SPLIT_CODES, PatchSet
from geofuse.errors import ConfigError, LabelError, SamplingError, SplitError
from geofuse.labels.points import point_groups
from test_extract import (
    CRS,
    POLYGONS,
    RES,
    X0,
    Y0,
    make_config,
    pixbox,
    rowcol,
    stack_values,
    write_stack,
)


def pixpoint(row: float, col: float) -> Point:
    """The map point at fractional pixel position (row, col) of the test stack."""
    return Point(X0 + col * RES, Y0 - row * RES)


def region(row: int) -> str:
    return "north" if row < 20 else "middle" if row < 40 else "south"


def lattice(step: int = 9, offset: float = 0.3) -> list[dict]:
    """Points on a lattice over the stack, away from the edge; class by band of rows."""
    return [{"name": f"p{r}_{c}", "landcover": region(r), "geometry": pixpoint(r + offset,
                                                                              c + offset)}
            for r in range(4, 56, step) for c in range(4, 76, step)]


def write_points(path: Path, rows: list[dict], crs: str = CRS) -> Path:
    gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS).to_crs(crs).to_file(path)
    return path


def extract_quietly(cfg) -> PatchSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_patches(cfg, progress=False)


def test_one_patch_centred_on_each_points_pixel(tmp_path: Path) -> None:
    write_stack(tmp_path / "work")
    rows = lattice()
    labels = write_points(tmp_path / "points.geojson", rows, crs="EPSG:4326")  # reprojected
    cfg = make_config(tmp_path, labels, on_nodata="flag")
    ps = extract_patches(cfg, progress=False)
    assert len(ps) == len(rows)  # one patch per point, whatever per_polygon says
    assert ps.provenance["label_geometry"] == "points"
    assert ps.provenance["sensors"] == {"s2": None, "dem": None}  # for true-colour views
    ids = ps.provenance["point_ids"]
    want = {d["name"]: d for d in rows}
    r, c = rowcol(ps)
    stack = stack_values()
    for k, pid in enumerate(ids):
        pr, pc = (int(v) for v in pid[1:].split("_"))
        assert (r[k], c[k]) == (pr, pc)  # the pixel holding the point
        assert ps.class_names[ps.y[k]] == want[pid]["landcover"]
        np.testing.assert_array_equal(ps.x[k], stack[:, pr - 2:pr + 3, pc - 2:pc + 3])
    # lattice points 9 px apart with 5 px patches: every point is a group of its own
    assert len(set(ps.groups.tolist())) == len(ps)
    assert all(len(ps.split_indices(s)) for s in ("train", "val", "test"))
    qc = json.loads(cfg.patches_path.with_name("patches_qc.json").read_text())
    assert qc["status"] == "passed" and qc["points"]["n_groups"] == len(ps)
    assert qc["points"]["per_class"] == {k: sum(d["landcover"] == k for d in rows)
                                         for k in ("middle", "north", "south")}


def test_points_whose_patches_share_a_pixel_never_straddle_a_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [{"name": f"p{i}", "landcover": region(int(r)), "geometry": pixpoint(r, c)}
            for i, (r, c) in enumerate(rng.uniform([3, 3], [57, 77], (120, 2)))]
    write_stack(tmp_path / "work")
    cfg = make_config(tmp_path, write_points(tmp_path / "p.gpkg", rows), on_nodata="flag")
    ps = extract_quietly(cfg)
    r, c = rowcol(ps)
    overlap = (np.abs(r[:, None] - r[None]) < 5) & (np.abs(c[:, None] - c[None]) < 5)
    same_group = ps.groups[:, None] == ps.groups[None]
    assert np.all(same_group[overlap])  # brute force: overlapping patches share a group
    assert np.all((ps.split[:, None] == ps.split[None, :])[same_group])
    assert len(set(ps.groups.tolist())) < len(ps)  # some did chain
    # a group distance of 15 px (150 m) joins more points, and every pair within it
    grouped = point_groups(r, c, ps.coords, [str(i) for i in range(len(ps))], 5, 150.0)
    near = np.hypot(*(ps.coords[:, None, :] - ps.coords[None]).transpose(2, 0, 1)) <= 150.0
    assert np.all((grouped[:, None] == grouped[None])[near | overlap])
    assert len(set(grouped.tolist())) < len(set(ps.groups.tolist()))


def test_group_distance_is_between_the_points_and_a_multipoint_is_one_group(
    tmp_path: Path,
) -> None:
    write_stack(tmp_path / "work")
    # A and B are 49 m apart; their pixel centres 60 m: group_distance 49.5 joins them
    rows = [*({**d, "name": f"{d['name']}x"} for d in lattice(step=12)),
            {"name": "A", "landcover": "north", "geometry": pixpoint(30.05, 10.95)},
            {"name": "B", "landcover": "north", "geometry": pixpoint(30.05, 15.85)},
            {"name": "M", "landcover": "south", "geometry": MultiPoint(
                [pixpoint(50.5, 5.5), pixpoint(50.5, 70.5)])}]  # one plot, far-apart samples
    cfg = make_config(tmp_path, write_points(tmp_path / "p.gpkg", rows), on_nodata="flag",
                      group_distance=49.5)
    ps = extract_quietly(cfg)
    group = dict(zip(ps.provenance["point_ids"], ps.groups.tolist(), strict=True))
    assert group["A"] == group["B"] and group["M#0"] == group["M#1"]
    assert len({group["A"], group["M#0"], group["p4_4x"]}) == 3
    qc = cfg.patches_path.with_name("patches_qc.md").read_text()
    assert "| groups (no split divides one) |" in qc and "mean inside" not in qc
    # a MultiPoint part id that meets a feature's id is refused
    clash = write_points(tmp_path / "c.gpkg", [*rows, {"name": "M#1", "landcover": "north",
                                                       "geometry": pixpoint(40.5, 40.5)}])
    with pytest.raises(LabelError, match=r"point ids M#1 occur twice"):
        extract_quietly(make_config(tmp_path, clash))
    # every point chained into one group: the split error says why and what to change
    cfg = make_config(tmp_path, write_points(tmp_path / "p.gpkg", rows), group_distance=5000)
    with pytest.raises(SplitError, match=r"p\.gpkg: \d+ points in 1 groups .*group_distance "
                       r"= 5000.*lower extract\.group_distance or extract\.patch_size"):
        extract_quietly(cfg)


def test_what_points_cannot_give_is_dropped_with_its_ids(tmp_path: Path) -> None:
    write_stack(tmp_path / "work")
    rows = [
        *lattice(step=18),
        {"name": "edge", "landcover": "north", "geometry": pixpoint(1.5, 30.5)},
        {"name": "outside", "landcover": "north", "geometry": pixpoint(-40, 30)},
        {"name": "twin", "landcover": "north", "geometry": pixpoint(4.9, 4.9)},  # p4_4's pixel
        {"name": "clash_a", "landcover": "north", "geometry": pixpoint(10.2, 50.2)},
        {"name": "clash_b", "landcover": "south", "geometry": pixpoint(10.8, 50.8)},
        {"name": "multi", "landcover": "south",
         "geometry": MultiPoint([pixpoint(50.5, 10.5), pixpoint(50.5, 60.5)])},
        {"name": "nolabel", "landcover": None, "geometry": pixpoint(30.5, 30.5)},
        {"name": "empty", "landcover": "north", "geometry": None},
    ]
    cfg = make_config(tmp_path, write_points(tmp_path / "p.gpkg", rows), on_nodata="flag")
    with pytest.warns(UserWarning) as caught:
        ps = extract_patches(cfg, progress=False)
    text = " | ".join(str(w.message) for w in caught)
    for expected in ("too near the stack's edge for a whole 5x5 px patch, ids: edge",
                     "merged into it (with the same class), ids: twin", "clash_a, clash_b",
                     "outside the stack extent",
                     "without a class value, ids: nolabel", "null or empty geometry, ids: empty"):
        assert expected in text
    ids = ps.provenance["point_ids"]
    assert {"multi#0", "multi#1", "p4_4"} <= set(ids)  # each part of a MultiPoint
    assert not {"edge", "outside", "twin", "clash_a", "clash_b", "nolabel", "empty"} & set(ids)
    placed = ps.provenance["sampling"]
    assert placed["merged_same_pixel"] == ["twin"] and placed["near_edge"] == ["edge"]


def test_per_class_caps_points_with_a_seeded_subset(tmp_path: Path) -> None:
    write_stack(tmp_path / "work")
    labels = write_points(tmp_path / "p.gpkg", lattice(step=6))
    cfg = make_config(tmp_path, labels, per_class=7, on_nodata="flag")
    with pytest.warns(UserWarning, match=r"class 'north': kept 7 of its \d+ points"):
        first = extract_patches(cfg, progress=False)
    assert np.bincount(first.y).tolist() == [7, 7, 7]
    again = extract_quietly(cfg)
    assert again.provenance["point_ids"] == first.provenance["point_ids"]
    # points lost to nodata (the NaN corner, rows < 10, cols >= 60) are replaced by others
    corner = [{"name": f"c{r}_{c}", "landcover": "north", "geometry": pixpoint(r + .5, c + .5)}
              for r in range(3, 9, 3) for c in range(62, 78, 3)]
    spare = [d for d in lattice(step=6) if d["landcover"] != "north"]
    north = [d for d in lattice(step=6) if d["landcover"] == "north"][:6]
    cfg = make_config(tmp_path, write_points(tmp_path / "q.gpkg", [*corner, *north, *spare]),
                      per_class=8)
    ps = extract_quietly(cfg)
    assert np.bincount(ps.y).tolist() == [8, 6, 8]  # north: only 6 points outside the corner
    assert all(i.startswith("p") for i in ps.provenance["point_ids"])
    assert not set(ps.provenance["nodata"].get("points_without_patches", [])) - {
        d["name"] for d in corner}


def test_points_in_one_pixel_average_their_numbers(tmp_path: Path) -> None:
    write_stack(tmp_path / "work")
    rows = [{**d, "soc": 1.0 + i} for i, d in enumerate(lattice(step=9))]
    rows += [{"name": "near", "landcover": "north", "soc": 20.0,
              "geometry": pixpoint(4.9, 4.9)}]  # p4_4's pixel, soc 1.0
    cfg = make_config(tmp_path, write_points(tmp_path / "p.gpkg", rows), on_nodata="flag")
    cfg.labels.value_field, cfg.labels.value_strata = "soc", 3
    with pytest.warns(UserWarning, match=r"merged into it \(their numbers averaged\), ids: near"):
        ps = extract_patches(cfg, progress=False)
    k = ps.provenance["point_ids"].index("p4_4")
    assert ps.values[k] == pytest.approx(10.5)


def test_the_disk_estimate_counts_one_patch_per_point() -> None:
    from geofuse._preflight_files import LabelCount
    from geofuse.config import parse_config
    from geofuse.preflight import _patch_count

    cfg = parse_config({"labels": {"path": "p.gpkg"}, "modalities": [
        {"name": "s2", "files": ["s2.tif"], "bands": ["B4"]}],
        "extract": {"per_class": 500, "patch_size": 32}}, Path("/tmp"))
    assert _patch_count(cfg, LabelCount(3000, points=True, classes=3)) == 1500
    assert _patch_count(cfg, LabelCount(3000, points=True)) == 3000
    assert _patch_count(cfg, LabelCount(3000, points=False, classes=3)) == 30_000


def test_a_value_per_point_studied_mapped_and_assessed(tmp_path: Path) -> None:
    from geofuse.experiments.ablation import run_ablation

    write_stack(tmp_path / "work")
    b2 = stack_values()[0]  # 100 row + col: a value the patches can learn
    rows = [{**d, "soc": float(b2[int(d["name"][1:].split("_")[0])].mean() / 100)}
            for d in lattice(step=9, offset=0.5)]
    cfg = make_config(tmp_path, write_points(tmp_path / "p.gpkg", rows))
    cfg.labels.value_field, cfg.labels.value_strata = "soc", 3
    cfg.splits.test_fraction = 0.0
    cfg.ablation.folds, cfg.ablation.test_fraction = 2, 0.25
    cfg.ablation.sensors, cfg.ablation.models = [["s2"]], ["random_forest"]
    cfg.mapping.scene, cfg.mapping.stride, cfg.mapping.suggest = "stack", 4, 3
    ps = extract_quietly(cfg)
    assert ps.regression and ps.value_name == "soc"
    by_id = {d["name"]: d["soc"] for d in rows}
    assert ps.values.tolist() == [by_id[i] for i in ps.provenance["point_ids"]]
    study = run_ablation(cfg, progress=False)
    heldout = gpd.read_file(study / "map" / "heldout_points.gpkg")
    assert "value" in heldout.columns and len(heldout) >= 5
    assessment = json.loads((study / "map" / "assessment.json").read_text())
    assert assessment["kind"] == "values" and assessment["metrics"]["n"] == len(heldout)
    assert assessment["metrics"]["spearman_r"] > 0.8  # the value follows the rows
    assert f"against the {len(heldout)} held-out points" in (study / "report.md").read_text()
    # where to measure next: by the spread of the two fold forests
    places = gpd.read_file(study / "map" / "label_suggestions.gpkg")
    assert 1 <= len(places) <= 3 and places["value"].isna().all()
    assert "map_value" in places.columns and "member_std" in places.columns


def test_point_files_the_flow_cannot_use_are_refused(tmp_path: Path) -> None:
    from geofuse._preflight_files import labels_problems

    write_stack(tmp_path / "work")
    far = write_points(tmp_path / "far.gpkg", [
        {"name": "a", "landcover": "north", "geometry": pixpoint(-500, -500)}])
    with pytest.raises(SamplingError, match=r"none of its 1 feature\(s\) gives a patch"):
        extract_quietly(make_config(tmp_path, far))
    from geofuse.data.extract_points import _check_settings

    points = write_points(tmp_path / "p.gpkg", lattice())
    with pytest.raises(ConfigError, match=r"group_distance = 500 is in map units.*geographic"):
        _check_settings(make_config(tmp_path, points, group_distance=500), "EPSG:4326")
    with pytest.warns(UserWarning, match=r"extract\.jitter .* do nothing for label points"):
        _check_settings(make_config(tmp_path, points, jitter=2), "EPSG:32718")
    cfg = make_config(tmp_path, points, target="mask")
    with pytest.raises(LabelError, match=r"extract\.target: class \(one patch per point\)"):
        extract_quietly(cfg)
    assert "extract.target: mask needs a class per pixel" in labels_problems(cfg)[1][0].reason
    lines = write_points(tmp_path / "l.gpkg", [
        {"name": "a", "landcover": "north", "geometry": LineString([(X0, Y0), (X0 + 99, Y0)])}])
    problems = labels_problems(make_config(tmp_path, lines))[1]
    assert "holds lines" in problems[0].reason
    crop_points = ({**d, "landcover": "crop"} for d in lattice()[:3])
    mixed = write_points(tmp_path / "m.gpkg", [*crop_points, *(
        {"name": f"P{i}", "landcover": c, "geometry": pixbox(*b)}
        for i, (c, b) in enumerate(POLYGONS))])
    with pytest.warns(UserWarning, match="give label points a file of their own"):
        ps = extract_patches(make_config(tmp_path, mixed, on_nodata="flag"), progress=False)
    assert {g.split(":")[0] for g in ps.groups.tolist()} == {"polygon"}


def test_a_point_study_maps_and_assesses_against_its_held_out_points(tmp_path: Path) -> None:
    from geofuse.experiments.ablation import run_ablation

    write_stack(tmp_path / "work")
    labels = write_points(tmp_path / "points.gpkg", lattice(step=9, offset=0.5))
    cfg = make_config(tmp_path, labels)
    cfg.splits.test_fraction = 0.0
    cfg.ablation.folds, cfg.ablation.test_fraction = 2, 0.25
    cfg.ablation.sensors, cfg.ablation.models = [["s2"]], ["random_forest"]
    cfg.mapping.scene, cfg.mapping.stride, cfg.mapping.suggest = "stack", 2, 4
    ps = extract_quietly(cfg)
    study = run_ablation(cfg, progress=False)
    folds = json.loads((study / "folds.json").read_text())
    test = set(folds["test_groups"])
    assert test and all(g.startswith("point:") for g in test)
    heldout = gpd.read_file(study / "map" / "heldout_points.gpkg")
    held = np.isin(ps.groups, sorted(test))
    assert len(heldout) == int(held.sum()) and set(heldout.geom_type) == {"Point"}
    assert sorted(heldout["id"]) == sorted(np.asarray(ps.provenance["point_ids"])[held])
    assessment = json.loads((study / "map" / "assessment.json").read_text())
    assert assessment["reference"]["kind"] == "points"
    assert assessment["reference"]["n_points"] == len(heldout)
    assert assessment["overall_accuracy"] > 0.8  # rows decide the class: easy to learn
    assert SPLIT_CODES["train"] in ps.split.tolist()
    lost = ps.provenance["nodata"]["points_without_patches"]  # the stack's NaN corner
    assert lost and all(int(i[1:].split("_")[0]) < 12 <= 58 <= int(i.split("_")[1]) for i in lost)
    report = (study / "report.md").read_text()
    assert "grouped by label points, those whose patches share a pixel" in report
    assert "pixels of the held-out label points" in report and "Polygon pixels" not in report
    # where to label next: away from the study's points, by the patch of its model (5 px)
    places = gpd.read_file(study / "map" / "label_suggestions.gpkg")
    known = gpd.read_file(labels).to_crs(CRS).geometry
    assert 1 <= len(places) <= 4 and places["class"].isna().all()
    assert min(p.distance(q) for p in places.geometry for q in known) >= 50
    assert "Where to label next:" in report and "label_suggestions.png" in report
    # places a user asked 'geofuse suggest' for in the map folder are never replaced
    from geofuse.experiments.study_map import _suggest
    from geofuse.mapping.suggest import SuggestOptions, suggest_labels

    mine = suggest_labels(study / "map" / "classes.tif", SuggestOptions(n=3, window=1,
                                                                        min_per_class=1),
                          out_dir=study / "map")
    cfg.mapping.suggest = None
    _suggest(cfg, study / "map", {"class_names": ["a", "b", "c"]}, redo=True, progress=False)
    assert mine.gpkg_path.is_file() and mine.json_path.is_file()
    cfg.mapping.suggest = 4
    with pytest.warns(UserWarning, match=r"written by 'geofuse suggest' and may hold your "):
        _suggest(cfg, study / "map", {"class_names": ["a", "b", "c"]}, redo=True, progress=False)
    assert json.loads(mine.json_path.read_text())["origin"] == "geofuse suggest"
