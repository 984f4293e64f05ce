"""``geofuse suggest``: where to label next, from a class map and its uncertainty; and the
loop back into extract as label points."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Point, box
from typer.testing import CliRunner

from class_maps import ORIGIN, write_class_map
from geofuse.cli import app
from geofuse.mapping.outputs import CLASS_NODATA
from geofuse.mapping.suggest import SuggestOptions, block_sides, suggest_labels
from geofuse.raster.io import write_raster

NAMES = ["water", "forest", "urban"]
TF = from_origin(*ORIGIN, 10.0, 10.0)
H, W = 120, 160


def _scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A map in three bands of columns, a doubtful diagonal strip, a nodata corner."""
    classes = np.zeros((H, W), np.uint8)
    classes[:, 60:120] = 1
    classes[:, 120:] = 2
    classes[:10, :20] = CLASS_NODATA
    rng = np.random.default_rng(0)
    entropy = rng.uniform(0.0, 0.3, (H, W)).astype(np.float32)
    rr, cc = np.mgrid[:H, :W]
    entropy[np.abs(rr - cc * H / W) < 4] += 0.6  # the doubtful strip
    entropy[classes == CLASS_NODATA] = np.nan
    entropy[50, 70] = np.nan  # a mapped pixel without uncertainty: never suggested
    path = write_class_map(tmp_path / "map", "classes", classes, NAMES)
    write_raster(tmp_path / "map" / "uncertainty.tif", np.stack([entropy, 1 - entropy]),
                 "EPSG:32633", TF, descriptions=["entropy", "one_minus_max_probability"])
    return path, classes, entropy


def _pixels(frame: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = ~TF @ (frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy())
    return np.floor(rows).astype(int), np.floor(cols).astype(int)


def window_mean(a: np.ndarray, r: int, c: int, w: int = 5) -> float:
    return float(a[r - w // 2:r + w // 2 + 1, c - w // 2:c + w // 2 + 1].mean())


def test_suggestions_are_uncertain_spread_over_classes_and_at_pixel_centres(
    tmp_path: Path,
) -> None:
    path, classes, entropy = _scene(tmp_path)
    result = CliRunner().invoke(app, ["suggest", str(path), "-n", "24", "--explore", "0.25",
                                      "--min-distance", "150", "--prefix", "r1_", "-o",
                                      str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "24 places (18 most uncertain, 6 random), at least 150 apart" in \
        " ".join(result.output.split())
    frame = gpd.read_file(tmp_path / "s" / "label_suggestions.gpkg")
    record = json.loads((tmp_path / "s" / "label_suggestions.json").read_text())
    assert len(frame) == 24 and (tmp_path / "s" / "label_suggestions.png").is_file()
    assert frame["id"].iloc[0] == "r1_0001"
    rows, cols = _pixels(frame)
    np.testing.assert_allclose(frame.geometry.x, TF.c + (cols + 0.5) * 10)  # pixel centres
    assert frame["map_class"].tolist() == classes[rows, cols].tolist()
    assert frame["map_class_name"].tolist() == [NAMES[k] for k in classes[rows, cols]]
    np.testing.assert_allclose(frame["entropy"], entropy[rows, cols], rtol=1e-6)
    # the score: the mean of the 5 x 5 neighbourhood, all mapped and of one class
    for r, c, score in zip(rows, cols, frame["score"], strict=True):
        assert score == pytest.approx(window_mean(entropy, r, c), rel=1e-5)
        assert len(np.unique(classes[r - 2:r + 3, c - 2:c + 3])) == 1
    assert frame["class"].isna().all()  # for the person who labels them
    gap = np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None])
    assert gap[~np.eye(len(frame), dtype=bool)].min() >= 15  # 150 m = 15 px
    per_class = {c["class"]: c for c in record["classes"]}
    assert all(c["uncertain"] + c["random"] >= 2 for c in per_class.values())
    assert sum(c["allocated"] for c in per_class.values()) == 24
    uncertain = frame[frame["pick"] == "uncertain"]
    assert len(uncertain) == 18
    interior = [window_mean(entropy, r, c) for r in range(2, H - 2) for c in range(2, W - 2)
                if len(np.unique(classes[r - 2:r + 3, c - 2:c + 3])) == 1
                and np.isfinite(entropy[r - 2:r + 3, c - 2:c + 3]).all()]
    assert uncertain["score"].max() == pytest.approx(max(interior), rel=1e-5)  # the worst
    assert (uncertain["score"] > 0.4).sum() >= 8  # on the doubtful strip, as spacing allows
    random = frame[frame["pick"] == "random"]["score"]
    assert (random < 0.4).sum() >= 3 and uncertain["score"].mean() > random.mean()
    again = suggest_labels(path, SuggestOptions(n=24, explore=0.25, min_distance=150),
                           out_dir=tmp_path / "again")
    assert gpd.read_file(again.gpkg_path).geometry.equals(frame.geometry)  # seeded


def test_ties_zero_doubt_and_the_explore_share(tmp_path: Path) -> None:
    classes = np.repeat(np.arange(10, dtype=np.uint8), 16)[None, :].repeat(160, axis=0)
    votes = np.random.default_rng(3).integers(0, 5, classes.shape) / 5  # 5 levels: ties
    path = write_class_map(tmp_path / "map", "classes", classes, [f"c{i}" for i in range(10)])
    write_raster(tmp_path / "map" / "uncertainty.tif",
                 np.stack([votes, np.zeros_like(votes)]).astype(np.float32), "EPSG:32633", TF,
                 descriptions=["vote_disagreement", "member_std"])
    res = suggest_labels(path, SuggestOptions(n=20, band="vote_disagreement", window=1,
                                              min_distance=50), out_dir=tmp_path / "a")
    frame = gpd.read_file(res.gpkg_path)
    rows, _ = _pixels(frame)
    assert rows.max() > 80  # ties are broken at random, not all in the top rows
    assert (frame["pick"] == "random").sum() == 4  # a fifth of 20, though 2 per class
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the band is 0 everywhere: pixel counts allocate
        zero = suggest_labels(path, SuggestOptions(n=30, band="member_std", window=1,
                                                   min_distance=50), out_dir=tmp_path / "z")
    assert zero.record["n"] == 30


def test_non_square_pixels_keep_the_distance_in_map_units(tmp_path: Path) -> None:
    from rasterio.transform import Affine

    classes = np.zeros((60, 60), np.uint8)
    classes[:, 30:] = 1
    tf = Affine(10.0, 0, ORIGIN[0], 0, -40.0, ORIGIN[1])
    path = tmp_path / "classes.tif"
    write_raster(path, classes[None], "EPSG:32633", tf, nodata=CLASS_NODATA)
    doubt = np.random.default_rng(0).uniform(0, 1, classes.shape).astype(np.float32)
    write_raster(tmp_path / "uncertainty.tif", doubt[None], "EPSG:32633", tf,
                 descriptions=["entropy"])
    res = suggest_labels(path, SuggestOptions(n=12, min_distance=300, window=1),
                         classes=["a", "b"], out_dir=tmp_path / "o")
    pts = gpd.read_file(res.gpkg_path).geometry
    xy = np.column_stack([pts.x, pts.y])
    gap = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    assert gap[~np.eye(len(xy), dtype=bool)].min() >= 300


def test_no_suggestion_near_existing_labels(tmp_path: Path) -> None:
    path, _, _entropy = _scene(tmp_path)
    strip = [Point(*(TF @ (c + 0.5, c * H / W + 0.5))) for c in range(0, W, 8)]
    labels = tmp_path / "labels.gpkg"
    field = box(*(TF @ (100, 100)), *(TF @ (60, 60)))  # a labelled polygon
    gpd.GeoDataFrame({"class": ["forest"] * (len(strip) + 1)},
                     geometry=[*strip, field], crs="EPSG:32633").to_file(labels)
    res = suggest_labels(path, SuggestOptions(n=20, min_distance=100, label_distance=60),
                         labels=labels, out_dir=tmp_path / "s")
    frame = gpd.read_file(res.gpkg_path)
    frame_pts = frame.geometry.to_numpy()
    assert min(p.distance(q) for p in frame_pts for q in strip) >= 60
    assert not any(field.contains(p) for p in frame_pts)
    assert res.record["label_distance"] == 60 and res.record["labels"] == str(labels)


def test_suggestions_go_back_into_extract_as_label_points(tmp_path: Path) -> None:
    from geofuse.data.extract import extract_patches
    from test_extract import CRS, HEIGHT, RES, WIDTH, X0, Y0, make_config, write_stack
    from test_point_labels import lattice, region, write_points

    write_stack(tmp_path / "work")
    classes = np.array([[["north", "middle", "south"].index(region(r))] * WIDTH
                        for r in range(HEIGHT)], np.uint8)
    path = write_class_map(tmp_path / "map", "classes", classes, ["north", "middle", "south"],
                           x0=X0, y0=Y0, pixel=RES, crs=CRS)  # on the stack's grid
    doubt = np.abs(np.arange(HEIGHT)[:, None] - 20.0) * np.ones((1, WIDTH))
    noise = np.random.default_rng(1).uniform(0, 0.01, doubt.shape)
    write_raster(tmp_path / "map" / "uncertainty.tif", (1 / (1 + doubt) + noise)[None].astype(
        np.float32), CRS, from_origin(X0, Y0, RES, RES), descriptions=["entropy"])
    known = write_points(tmp_path / "points.gpkg", lattice(step=12))
    res = suggest_labels(path, SuggestOptions(n=9, min_distance=60, label_distance=20),
                         labels=known)
    asked = gpd.read_file(res.gpkg_path)
    rows = ((Y0 - asked.geometry.y) / RES).astype(int)
    cols = ((asked.geometry.x - X0) / RES).astype(int)
    asked["class"] = [region(r) for r in rows]  # the person labels them
    merged = gpd.GeoDataFrame(
        [*gpd.read_file(known).rename(columns={"landcover": "class"}).to_dict("records"),
         *asked.rename(columns={"id": "name"})[["name", "class", "geometry"]]
         .to_dict("records")], geometry="geometry", crs=CRS)
    merged.rename(columns={"class": "landcover"}).to_file(tmp_path / "more.gpkg")
    cfg = make_config(tmp_path, tmp_path / "more.gpkg", on_nodata="flag")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = extract_patches(cfg, progress=False)
    ids = set(ps.provenance["point_ids"])
    inner = (rows >= 2) & (rows < HEIGHT - 2) & (cols >= 2) & (cols < WIDTH - 2)
    assert inner.sum() >= 5  # a 5 px patch fits around most
    assert set(asked["id"][inner]) <= ids  # each of those became a training patch
    assert (asked["pick"] == "uncertain").sum() >= 5
    # each class's most doubtful rows whose 5 x 5 neighbourhood is of the class alone: next
    # to the boundary at row 20 (the south class: its own edge at row 40)
    nearest = {"north": 17, "middle": 22, "south": 42}
    uncertain = asked["pick"] == "uncertain"
    assert rows[uncertain].tolist() == [nearest[c] for c in asked["map_class_name"][uncertain]]


def test_block_sides_bound_the_candidates() -> None:
    assert block_sides(100, 100, 0.2, 0.2) == (1, 1)
    assert block_sides(100, 100, 7.5, 2.0) == (8, 2)
    sr, sc = block_sides(100_000, 100_000, 2, 2)
    assert (100_000 / sr) * (100_000 / sc) <= 1_000_000 * 1.01


def test_suggest_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    path, _, _ = _scene(tmp_path)
    write_raster(tmp_path / "small.tif", np.zeros((1, 8, 8), np.float32), "EPSG:32633", TF,
                 descriptions=["entropy"])
    cases = [
        (["-n", "0"], ["-n 0 (at least 1)"]),
        (["-n", "5", "--explore", "1.5"], ["--explore 1.5 (0..1)"]),
        (["-n", "4"], ["-n 4 is below the minimum of 2 places per class", "(6)"]),
        (["-n", "9", "--window", "0"], ["--window 0 (a side in pixels, at least 1)"]),
        (["-n", "9", "--band", "member_std"], ["no band 'member_std'", "entropy"]),
        (["-n", "9", "--uncertainty", str(tmp_path / "small.tif")],
         ["on another grid than the map", "small.tif"]),
        (["-n", "9", "--labels", str(tmp_path / "none.gpkg")], ["none.gpkg", "does not exist"]),
    ]
    runner = CliRunner()
    for args, words in cases:
        result = runner.invoke(app, ["suggest", str(path), *args, "-o", str(tmp_path / "o")])
        out = " ".join(result.output.split())
        assert result.exit_code == 2, out
        assert all(w in out for w in words), (words, out)
        assert "Traceback" not in out
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    with pytest.warns(UserWarning, match=r"places of the 30 asked for: the map has only 6 "
                      r"candidate blocks"):
        res = suggest_labels(path, SuggestOptions(n=30, min_distance=600),
                             out_dir=tmp_path / "sparse")
    assert res.record["n"] < 30 and res.record["shortfall"]["requested"] == 30


def test_quota_of_a_labelled_class_goes_to_the_others(tmp_path: Path) -> None:
    path, _classes, _entropy = _scene(tmp_path)
    labels = tmp_path / "labels.gpkg"  # the whole water class is labelled already
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[box(*(TF @ (0, H)), *(TF @ (60, 0)))],
                     crs="EPSG:32633").to_file(labels)
    with pytest.warns(UserWarning, match=r"class\(es\) 'water' get no place: they have no "
                      r"interior pixels away from the labels"):
        res = suggest_labels(path, SuggestOptions(n=16, min_distance=100, label_distance=0),
                             labels=labels, out_dir=tmp_path / "s")
    frame = gpd.read_file(res.gpkg_path)
    assert len(frame) == 16 and "water" not in set(frame["map_class_name"])
    assert set(frame["map_class_name"]) == {"forest", "urban"}


def test_the_window_defaults_to_the_patch_of_the_model_that_made_the_map(tmp_path: Path) -> None:
    path, _, _ = _scene(tmp_path)
    assert suggest_labels(path, SuggestOptions(n=9), out_dir=tmp_path / "a").record[
        "window"] == 5  # no predict.json beside the map
    (tmp_path / "map" / "predict.json").write_text(json.dumps({"patch_size": 8}))
    res = suggest_labels(path, SuggestOptions(n=9), out_dir=tmp_path / "b")
    assert res.record["window"] == 9  # odd, so the pixel is the patch's centre
    frame = gpd.read_file(res.gpkg_path)
    with rasterio.open(path) as src:
        classes = src.read(1)
    rows, cols = _pixels(frame)
    assert all(len(np.unique(classes[r - 4:r + 5, c - 4:c + 5])) == 1
               for r, c in zip(rows, cols, strict=True))


def test_a_value_map_gets_places_where_the_fold_models_disagree(tmp_path: Path) -> None:
    values = np.linspace(0, 300, H * W, dtype=np.float32).reshape(H, W)  # e.g. biomass, t/ha
    values[:10, :] = np.nan  # unmapped
    spread = np.full((H, W), 2.0, np.float32)
    spread[60:100, 100:150] = 40.0  # the fold models disagree here
    spread[np.isnan(values)] = np.nan
    (tmp_path / "map").mkdir()
    path = tmp_path / "map" / "values.tif"
    write_raster(path, values[None], "EPSG:32633", TF, descriptions=["biomass"])
    write_raster(tmp_path / "map" / "uncertainty.tif", spread[None], "EPSG:32633", TF,
                 descriptions=["member_std"])
    res = suggest_labels(path, SuggestOptions(n=10, min_distance=60, explore=0.2),
                         out_dir=tmp_path / "s")
    frame = gpd.read_file(res.gpkg_path)
    assert res.record["band"] == "member_std" and len(frame) == 10
    assert "value" in frame.columns and "class" not in frame.columns  # to measure
    assert frame["value"].isna().all()
    rows, cols = _pixels(frame)
    np.testing.assert_allclose(frame["map_value"], values[rows, cols], rtol=1e-6)
    uncertain = frame["pick"] == "uncertain"
    assert uncertain.sum() == 8 and (frame.loc[uncertain, "member_std"] == 40.0).all()
    assert (rows >= 10).all()  # never where the map has no value
