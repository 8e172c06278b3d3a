from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metarch.data.formats import DATA_FORMATS, discover_datasets
from metarch.data.lake import (
    LakeResult,
    LakeRuns,
    evaluate_lake_runs,
    find_lake_runs_source,
    ink_coordinates,
    load_lake_runs,
    load_lake_runs_source,
    mhd_distances,
    mhd_nearest_neighbour,
    modified_hausdorff_distance,
)
from metarch.errors import DataError
from metarch.utils.progress import progress_callback
from tests.fixtures import lake_answer_key, omniglot_png, write_lake_runs, write_omniglot_set

Classifier = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """One torch thread: the small MHD blocks gain nothing from more, and a busy machine
    (or pytest-xdist workers) would otherwise oversubscribe its cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def background_zip(request: pytest.FixtureRequest) -> Path | None:
    """The real background zip when the shared data is there, else None (synthetic runs)."""
    try:
        root: Path = request.getfixturevalue("shared_data_root")
    except pytest.skip.Exception:
        return None
    return root / "omniglot" / "images_background.zip"


@pytest.fixture(scope="module")
def runs_zip(tmp_path_factory: pytest.TempPathFactory, background_zip: Path | None) -> Path:
    return write_lake_runs(tmp_path_factory.mktemp("lake-zip"), background_zip)


@pytest.fixture(scope="module")
def runs(runs_zip: Path) -> LakeRuns:
    return load_lake_runs_source(runs_zip)


@pytest.fixture(scope="module")
def same_drawing_zip(tmp_path_factory: pytest.TempPathFactory, background_zip: Path | None) -> Path:
    return write_lake_runs(tmp_path_factory.mktemp("lake-same"), background_zip, same_drawing=True)


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lake_runs(tmp_path_factory.mktemp("lake-synthetic"), None, as_zip=False)


@pytest.fixture
def broken(synthetic_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic all_runs/ folder for a test to damage.

    Files are hard links (fast); tests replace a file with :func:`_replace`, never in place.
    """
    return Path(shutil.copytree(synthetic_folder, tmp_path / "all_runs", copy_function=os.link))


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # break the hard link before writing
    path.write_bytes(data)


def _png(size: int = 105, mode: str = "1") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 1 if mode == "1" else 255).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- loading


def test_layout_and_answers(runs: LakeRuns, runs_zip: Path) -> None:
    assert runs.source == runs_zip
    assert len(runs) == 20 and runs.image_size == 28
    for number, run in enumerate(runs, start=1):
        assert run.number == number
        assert run.support_images.shape == (20, 1, 28, 28)
        assert run.query_images.shape == (20, 1, 28, 28)
        assert run.support_images.dtype == np.uint8
        assert run.query_labels.dtype == np.int64
        assert run.query_labels.tolist() == lake_answer_key(number)
        # Ink on a dark background; the class images of a run are all different.
        assert run.support_images.max() == 255 and run.support_images.mean() < 80
        assert len({image.tobytes() for image in run.support_images}) == 20
    support = runs[0].support_tensor()
    assert support.dtype == torch.float32 and float(support.max()) == 1.0
    assert torch.equal(runs[0].query_tensor(), torch.from_numpy(runs[0].query_images) / 255.0)


def test_zip_and_folder_forms_are_identical(
    runs: LakeRuns, tmp_path: Path, background_zip: Path | None
) -> None:
    forms = [
        write_lake_runs(tmp_path / "top", background_zip, top_folder="all_runs"),
        write_lake_runs(tmp_path / "folder", background_zip, as_zip=False),
        # An archive with a top folder extracted into a folder of the same name.
        write_lake_runs(tmp_path / "nested", background_zip, as_zip=False, top_folder="all_runs"),
    ]
    with zipfile.ZipFile(forms[0]) as archive:
        assert archive.namelist()[0].startswith("all_runs/run01/")
    for source in forms:
        other = load_lake_runs_source(source)
        for a, b in zip(runs, other, strict=True):
            assert a.number == b.number
            np.testing.assert_array_equal(a.support_images, b.support_images)
            np.testing.assert_array_equal(a.query_images, b.query_images)
            np.testing.assert_array_equal(a.query_labels, b.query_labels)


def test_full_resolution_is_binary(runs_zip: Path) -> None:
    full = load_lake_runs_source(runs_zip, image_size=105)
    assert full.image_size == 105
    assert set(np.unique(full[0].support_images).tolist()) == {0, 255}


@pytest.mark.parametrize("subfolder", ["omniglot", ""])
def test_load_from_data_root(tmp_path: Path, synthetic_folder: Path, subfolder: str) -> None:
    shutil.copytree(synthetic_folder, tmp_path / subfolder / "all_runs", copy_function=os.link)
    loaded = load_lake_runs(tmp_path, image_size=20)
    assert len(loaded) == 20 and loaded.image_size == 20
    assert loaded.source == tmp_path / subfolder / "all_runs"


def test_absent_data_says_what_to_place_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_lake_runs(tmp_path)
    message = str(info.value)
    assert "all_runs.zip" in message
    assert str(tmp_path / "omniglot") in message
    assert "metarch data download" in message


# ----------------------------------------------------------------------------- errors


def _edit_labels(folder: Path, run: int, edit: Callable[[list[str]], list[str]]) -> Path:
    path = folder / f"run{run:02d}" / "class_labels.txt"
    _replace(path, ("\n".join(edit(path.read_text().splitlines())) + "\n").encode())
    return path


def _raises(source: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as info:
        load_lake_runs_source(source)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_label_line(broken: Path) -> None:
    _edit_labels(broken, 3, lambda lines: lines[:4] + lines[5:])
    _raises(broken, "run03/class_labels.txt", "no line for run03/test/item05.png")


def test_label_line_with_wrong_field_count(broken: Path) -> None:
    _edit_labels(broken, 2, lambda lines: [*lines[:6], lines[6] + " extra", *lines[7:]])
    _raises(broken, "run02/class_labels.txt:7", "expected 2 fields", "got 3")


def test_label_path_from_another_run(broken: Path) -> None:
    _edit_labels(
        broken, 2, lambda lines: [lines[0].replace("run02/test", "run03/test"), *lines[1:]]
    )
    _raises(
        broken, "run02/class_labels.txt:1", "'run03/test/item01.png' is not a query image of run02"
    )


def test_label_class_not_in_run(broken: Path) -> None:
    _edit_labels(
        broken, 1, lambda lines: [lines[0].split()[0] + " run01/training/class21.png", *lines[1:]]
    )
    _raises(broken, "run01/class_labels.txt:1", "is not a class image of run01")


def test_duplicate_query(broken: Path) -> None:
    _edit_labels(broken, 1, lambda lines: [*lines, lines[2]])
    _raises(
        broken, "run01/class_labels.txt:21", "duplicate line for run01/test/item03.png", "line 3"
    )


def test_missing_labels_file(broken: Path) -> None:
    (broken / "run02" / "class_labels.txt").unlink()
    _raises(broken, "run02/class_labels.txt", "missing")


def test_missing_image(broken: Path) -> None:
    (broken / "run01" / "test" / "item07.png").unlink()
    _raises(broken, "run01/test/item07.png", "missing image")


def test_unexpected_image(broken: Path) -> None:
    (broken / "run01" / "training" / "class21.png").write_bytes(omniglot_png(1))
    _raises(broken, "run01/training/class21.png", "unexpected image")


def test_missing_run_folder(broken: Path) -> None:
    shutil.rmtree(broken / "run07")
    _raises(broken, "missing run folders run07")


def test_no_runs_at_all(tmp_path: Path) -> None:
    (tmp_path / "all_runs").mkdir()
    _raises(tmp_path / "all_runs", "no Lake one-shot runs found")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_png(size=28), "got 28x28"),
        (_png(mode="L"), "mode 'L'"),
        (b"not a png", "not a readable PNG"),
    ],
)
def test_bad_image(broken: Path, data: bytes, fragment: str) -> None:
    _replace(broken / "run01" / "training" / "class04.png", data)
    _raises(broken, "run01/training/class04.png", fragment)


def test_truncated_zip(runs_zip: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "all_runs.zip"
    damaged.write_bytes(runs_zip.read_bytes()[: runs_zip.stat().st_size // 2])
    _raises(damaged, "truncated or corrupt")


def test_bad_image_size_argument(runs_zip: Path) -> None:
    with pytest.raises(DataError, match="image_size"):
        load_lake_runs_source(runs_zip, image_size=0)


# ----------------------------------------------------------------------------- protocol


def _answer_key_oracle() -> Classifier:
    keys: Iterator[list[int]] = (lake_answer_key(run) for run in range(1, 21))

    def classify(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return torch.tensor(next(keys), dtype=torch.int64)

    return classify


def _pixel_oracle(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    # Works when each query is its class image: the nearest support is an exact match.
    distances = (query[:, None] - support[None]).abs().flatten(2).sum(dim=2)
    assert bool((distances.amin(dim=1) == 0).all())
    return labels[distances.argmin(dim=1)]


def test_classifier_inputs(runs: LakeRuns) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def classify(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        seen.append((support, labels, query))
        return torch.zeros(20, dtype=torch.int64)

    evaluate_lake_runs(runs, classify)
    assert len(seen) == 20
    support, labels, query = seen[4]
    assert support.shape == query.shape == (20, 1, 28, 28)
    assert support.dtype == query.dtype == torch.float32
    assert float(support.min()) >= 0.0 and float(support.max()) <= 1.0
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(20))
    np.testing.assert_array_equal((support * 255).round().to(torch.uint8), runs[4].support_images)


def test_answer_key_oracle_is_perfect(runs: LakeRuns) -> None:
    reports: list[tuple[int, int | None]] = []
    with progress_callback(lambda label, done, total: reports.append((done, total))):
        result = evaluate_lake_runs(runs, _answer_key_oracle())
    assert reports[0] == (0, 20) and reports[-1] == (20, 20)
    assert result.per_run_error_percent == [0.0] * 20
    assert result.error_percent == 0.0


def test_pixel_oracle_is_perfect(same_drawing_zip: Path) -> None:
    result = evaluate_lake_runs(load_lake_runs_source(same_drawing_zip), _pixel_oracle)
    assert result.per_run_error_percent == [0.0] * 20


@pytest.mark.parametrize("label", [0, 13])
def test_constant_classifier_error(runs: LakeRuns, label: int) -> None:
    def classify(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return torch.full((20,), label, dtype=torch.int64)

    result = evaluate_lake_runs(runs, classify)
    expected = [100.0 * sum(c != label for c in lake_answer_key(r)) / 20 for r in range(1, 21)]
    assert result.per_run_error_percent == expected
    assert result.error_percent == pytest.approx(sum(expected) / 20)


def test_result_json() -> None:
    result = LakeResult(per_run_error_percent=[10.0, 20.0, 45.0])
    assert result.error_percent == pytest.approx(25.0)
    assert result.to_json() == {"error_percent": pytest.approx(25.0), "per_run": [10.0, 20.0, 45.0]}


@pytest.mark.parametrize(
    ("output", "error", "fragment"),
    [
        (torch.zeros(20, 20, dtype=torch.int64), ValueError, ".argmax(dim=1)"),
        (torch.zeros(19, dtype=torch.int64), ValueError, "expected (20,)"),
        (torch.zeros(20), TypeError, "torch.float32"),
        ([0] * 20, TypeError, "returned list"),
        (torch.full((20,), 20, dtype=torch.int64), ValueError, "outside 0..19"),
    ],
)
def test_classifier_output_is_checked(
    runs: LakeRuns, output: object, error: type[Exception], fragment: str
) -> None:
    def classify(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return output  # type: ignore[return-value]

    with pytest.raises(error) as info:
        evaluate_lake_runs(runs, classify)
    assert "run01" in str(info.value) and fragment in str(info.value)


def test_evaluate_a_subset_of_runs(runs: LakeRuns) -> None:
    result = evaluate_lake_runs(runs.runs[:3], _answer_key_oracle())
    assert result.per_run_error_percent == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="at least one run"):
        evaluate_lake_runs([], _pixel_oracle)


# ----------------------------------------------------------------------------- MHD baseline


def test_ink_coordinates_are_centred() -> None:
    image = torch.zeros(1, 5, 5)
    image[0, 1, 1] = image[0, 3, 3] = 1.0
    image[0, 0, 4] = 0.4  # below the threshold
    points = ink_coordinates(image)
    assert points.tolist() == [[-1.0, -1.0], [1.0, 1.0]]
    assert ink_coordinates(image, center=False).tolist() == [[1.0, 1.0], [3.0, 3.0]]
    assert ink_coordinates(torch.zeros(4, 4)).shape == (0, 2)


def test_mhd_distances_match_the_pairwise_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    sets = [torch.randint(0, 30, (n, 2), generator=generator).double() for n in (1, 7, 40, 300)]
    sets.append(torch.zeros(0, 2, dtype=torch.float64))
    table = mhd_distances(sets, sets)
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            expected = modified_hausdorff_distance(a, b)
            if len(a) and len(b):
                d = np.linalg.norm(a.numpy()[:, None] - b.numpy()[None], axis=2)
                brute = max(d.min(axis=1).mean(), d.min(axis=0).mean())
                assert float(expected) == pytest.approx(brute, abs=1e-12)
            assert float(table[i, j]) == pytest.approx(float(expected), abs=1e-9)
    assert float(table[-1, -1]) == 0.0 and float(table[0, -1]) == float("inf")


def test_mhd_on_identical_drawings_is_perfect(same_drawing_zip: Path) -> None:
    result = evaluate_lake_runs(load_lake_runs_source(same_drawing_zip), mhd_nearest_neighbour)
    assert result.per_run_error_percent == [0.0] * 20
    # Lake's resolution, on a few queries of one run to keep the test fast.
    run = load_lake_runs_source(same_drawing_zip, image_size=105)[0]
    query = run.query_tensor()[:4]
    predicted = mhd_nearest_neighbour(run.support_tensor(), torch.arange(20), query)
    assert predicted.tolist() == run.query_labels[:4].tolist()


@pytest.mark.shared_data
def test_mhd_on_real_drawers(shared_data_root: Path, runs: LakeRuns) -> None:
    result = evaluate_lake_runs(runs, mhd_nearest_neighbour)
    assert len(result.per_run_error_percent) == 20
    assert all(0.0 <= e <= 100.0 and e % 5 == 0 for e in result.per_run_error_percent)
    assert result.error_percent == pytest.approx(sum(result.per_run_error_percent) / 20)
    # Far better than chance (95%), as for Lake's 38.8% on the evaluation alphabets.
    assert result.error_percent < 70.0


# ----------------------------------------------------------------------------- discovery


def test_discovery_reports_runs(tmp_path: Path, runs_zip: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    shutil.copy(runs_zip, tmp_path / "omniglot" / "all_runs.zip")
    found = [s for s in discover_datasets(tmp_path) if s.format == "lake-runs"]
    assert len(found) == 1
    summary = found[0]
    assert (summary.name, summary.path) == ("lake_runs", tmp_path / "omniglot" / "all_runs.zip")
    assert (summary.alphabets, summary.classes, summary.images, summary.runs) == (
        None,
        400,
        800,
        20,
    )
    assert summary.to_json()["runs"] == 20
    with pytest.raises(DataError, match="metarch evaluate --protocol lake-runs"):
        DATA_FORMATS.get("lake-runs")().load(summary, image_size=28)


def test_discovery_of_folder_with_top_folder(tmp_path: Path) -> None:
    write_lake_runs(tmp_path, None, as_zip=False, top_folder="all_runs")
    (summary,) = DATA_FORMATS.get("lake-runs")().discover(tmp_path)
    assert (summary.path, summary.runs, summary.images) == (tmp_path / "all_runs", 20, 800)
    assert DATA_FORMATS.get("lake-runs")().discover(tmp_path / "omniglot") == []


def test_result_needs_percentages() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        LakeResult(per_run_error_percent=[])
    with pytest.raises(ValueError, match="percentages"):
        LakeResult(per_run_error_percent=[0.5, 150.0])


@pytest.mark.parametrize("subfolder", ["", "omniglot"])
def test_runs_extracted_into_the_data_root(
    tmp_path: Path, synthetic_folder: Path, subfolder: str
) -> None:
    root = tmp_path / "root"
    shutil.copytree(synthetic_folder, root / subfolder, copy_function=os.link)  # run01/ ...
    write_omniglot_set(root, "images_background", {"Alpha": 2}, drawings=2, as_zip=False)
    assert find_lake_runs_source(root) == root / subfolder
    runs = load_lake_runs(root, image_size=28)
    assert len(runs) == 20 and runs.source == root / subfolder
    found = discover_datasets(root)
    assert [(s.name, s.runs, s.images) for s in found if s.format == "lake-runs"] == [
        ("lake_runs", 20, 800)
    ]
    # The run folders are Lake's, not 20 class-per-folder image sets.
    assert not [s for s in found if s.name.startswith("run")]


def test_unreadable_runs_are_listed_not_raised(tmp_path: Path, runs_zip: Path) -> None:
    (tmp_path / "all_runs.zip").write_bytes(runs_zip.read_bytes()[:5000])
    (summary,) = DATA_FORMATS.get("lake-runs")().discover(tmp_path)
    assert summary.problem is not None and "truncated or corrupt" in summary.problem
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_lake_runs(tmp_path)
