"""Corrupt episode stores: one validation on open (and `dataset info --verify` for a full read),
the same one-line DatasetError from the API and the CLI, and nothing on disk changed by either."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from ebt_policy.cli import main
from ebt_policy.datasets import EpisodeStore, compute_stats
from ebt_policy.errors import DatasetError

METADATA = {
    "task": {"name": "twogoal", "env_kwargs": {"images": False}},
    "control_hz": 20.0,
    "horizon": 120,
    "action_space": {"kind": "delta", "low": [-1, -1], "high": [1, 1], "names": ["vx", "vy"]},
    "obs_keys": {"low_dim": ["eef_pos"], "rgb": ["agentview_image"]},
    "collection": {"task": "twogoal", "seed": 0, "next_seed": 2, "kept_seeds": [0, 1]},
}


def _episode(length: int, value: float) -> dict[str, np.ndarray]:
    return {
        "action": np.full((length, 2), value, np.float32),
        "eef_pos": np.full((length, 3), value, np.float32),
        # an all-black frame: its chunk equals the fill value and must still be written
        "agentview_image": np.zeros((length, 4, 4, 3), np.uint8),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A valid store: 2 episodes (3 + 2 steps), one chunk per image frame, with stats."""
    path = tmp_path_factory.mktemp("template") / "demos.zarr"
    store = EpisodeStore.create(path, METADATA)
    store.add_episode(_episode(3, 0.5))
    store.add_episode(_episode(2, -0.5))
    compute_stats(store)
    return path


def _digest(path: Path) -> dict[str, str]:
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _json_edit(rel: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        doc = path / rel
        meta = json.loads(doc.read_text())
        edit(meta)
        doc.write_text(json.dumps(meta))

    return apply


def _field(rel: str, **updates) -> Callable[[Path], None]:
    """Set top-level fields of the metadata document ``rel``."""
    return _json_edit(rel, lambda meta: meta.update(updates))


def _attr(dotted: str, value) -> Callable[[Path], None]:
    """Set root attribute ``dotted`` (a.b.c) to ``value`` in the root zarr.json."""

    def edit(meta: dict) -> None:
        node = meta["attributes"]
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value

    return _json_edit("zarr.json", edit)


def _write(rel: str, content: bytes) -> Callable[[Path], None]:
    return lambda path: (path / rel).write_bytes(content)


def _truncate(rel: str, keep: int) -> Callable[[Path], None]:
    return lambda path: (path / rel).write_bytes((path / rel).read_bytes()[:keep])


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda path: (path / rel).unlink()


def _replace_array(key: str, **kwargs) -> Callable[[Path], None]:
    """Replace ``data/<key>`` by an array made with zarr's own API (``value`` fills it)."""

    def apply(path: Path) -> None:
        value = kwargs.pop("value")
        data = zarr.open_group(str(path / "data"), mode="r+")
        del data[key]
        arr = data.create_array(key, **kwargs)
        arr[...] = value

    return apply


def _nan_in(key: str) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        zarr.open_array(str(path / "data" / key), mode="r+")[4, 1] = np.nan

    return apply


# (id, corruption, text the error must contain). Paths are relative to the store.
CORRUPTIONS = [
    # issue 15 defect 2: deleted chunk files read as zeros
    ("missing-action-chunk", _remove("data/action/c/0/0"),
     "key 'data/action': chunk file 'data/action/c/0/0' is missing (steps 0-4 of 5 committed)"),
    ("missing-image-chunk", _remove("data/agentview_image/c/3/0/0/0"),
     "'data/agentview_image/c/3/0/0/0' is missing (steps 3-3 of 5 committed)"),
    ("missing-episode-ends-chunk", _remove("meta/episode_ends/c/0"),
     "key 'meta/episode_ends': chunk file 'meta/episode_ends/c/0' is missing (entries 0-1"),
    # issue 15 defect 5: corrupt array-level zarr metadata
    ("truncated-array-zarr-json", _truncate("data/action/zarr.json", 20),
     "key 'data/action': unreadable metadata 'data/action/zarr.json'"),
    ("empty-array-zarr-json", _write("data/eef_pos/zarr.json", b""),
     "key 'data/eef_pos': unreadable metadata 'data/eef_pos/zarr.json'"),
    ("array-zarr-json-not-an-object", _write("data/action/zarr.json", b"[1, 2]"),
     "key 'data/action': unreadable metadata 'data/action/zarr.json'"),
    ("missing-array-zarr-json", _remove("data/eef_pos/zarr.json"),
     "key 'data/eef_pos': metadata 'data/eef_pos/zarr.json' is missing"),
    ("array-unknown-dtype", _field("data/action/zarr.json", data_type="nosuch"),
     "key 'data/action': unreadable metadata 'data/action/zarr.json'"),
    ("array-shape-not-a-list", _field("data/action/zarr.json", shape="x"),
     "key 'data/action': unreadable metadata 'data/action/zarr.json'"),
    ("truncated-episode-ends-zarr-json", _truncate("meta/episode_ends/zarr.json", 30),
     "key 'meta/episode_ends': unreadable metadata 'meta/episode_ends/zarr.json'"),
    ("truncated-data-group-zarr-json", _truncate("data/zarr.json", 10),
     "key 'data': unreadable metadata 'data/zarr.json'"),
    ("truncated-root-zarr-json", _truncate("zarr.json", 40),
     "unreadable zarr metadata 'zarr.json'"),
    # array dtypes and shapes the stack cannot use
    ("string-dtype-action", _replace_array("action", shape=(5, 2), dtype=str, value="a"),
     "key 'data/action' has dtype"),
    ("action-3d", _replace_array("action", shape=(5, 2, 1), dtype="float32", value=1.0),
     "key 'data/action' has shape (5, 2, 1), expected (steps, action_dim)"),
    ("image-key-2d", _replace_array("agentview_image", shape=(5, 48), dtype="uint8", value=1),
     "key 'data/agentview_image' is an image key but has shape (5, 48)"),
    ("missing-action-array", lambda p: shutil.rmtree(p / "data" / "action"),
     "missing key 'data/action'"),
    ("float-episode-ends", _field("meta/episode_ends/zarr.json", data_type="float64"),
     "key 'meta/episode_ends' has dtype float64, expected int64"),
    # badly typed root attributes
    ("action-space-names-int", _attr("action_space.names", 3),
     "metadata key 'action_space.names': expected a list of strings, got 3"),
    ("action-space-low-strings", _attr("action_space.low", ["a", "b"]),
     "metadata key 'action_space.low': expected a list of finite numbers, got ['a', 'b']"),
    ("action-space-not-an-object", _attr("action_space", "delta"),
     "metadata key 'action_space': expected an object, got 'delta'"),
    ("action-space-kind-unknown", _attr("action_space.kind", "joint"),
     "metadata key 'action_space.kind': expected 'delta' or 'absolute', got 'joint'"),
    ("task-name-int", _attr("task.name", 7), "metadata key 'task.name': expected a string, got 7"),
    ("task-env-kwargs-list", _attr("task.env_kwargs", [1]),
     "metadata key 'task.env_kwargs': expected an object, got [1]"),
    ("control-hz-string", _attr("control_hz", "fast"),
     "metadata key 'control_hz': expected a positive number, got 'fast'"),
    ("horizon-zero", _attr("horizon", 0),
     "metadata key 'horizon': expected a positive integer, got 0"),
    ("obs-keys-rgb-string", _attr("obs_keys.rgb", "agentview_image"),
     "metadata key 'obs_keys.rgb': expected a list of strings, got 'agentview_image'"),
    ("stats-mean-string", _attr("stats.action.mean", "zero"),
     "metadata key 'stats.action.mean': expected an array of numbers, got 'zero'"),
    ("stats-wrong-shape", _attr("stats.eef_pos.std", [1.0, 1.0]),
     "'stats.eef_pos.std': shape (2,), expected (3,) (the per-step shape of data/eef_pos)"),
    ("stats-lacks-max", _attr("stats.action", {"min": [0, 0]}),
     "metadata key 'stats.action' lacks 'max'"),
    ("collection-kept-seeds-string", _attr("collection.kept_seeds", "0,1"),
     "metadata key 'collection.kept_seeds': expected a list of integers, got '0,1'"),
    ("schema-version-string", _attr("schema_version", "1"),
     "key 'schema_version': unknown schema version '1'"),
    # values
    ("nan-action", _nan_in("action"),
     "key 'data/action': non-finite value nan at step 4 (episode 1)"),
    ("corrupt-action-chunk", _write("data/action/c/0/0", b"not blosc"),
     "key 'data/action': unreadable data"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("corrupt", "expected"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupt_store_is_refused_with_one_line_and_left_untouched(
    template, tmp_path, capsys, corrupt, expected
):
    path = tmp_path / "bad.zarr"
    shutil.copytree(template, path)
    corrupt(path)
    before = _digest(path)
    for mode in ("r", "a"):  # "a": what collect's resume and compute_stats open
        with pytest.raises(DatasetError) as info:
            EpisodeStore.open(path, mode)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{path}: "), message
        assert expected in message
    assert main(["dataset", "info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"error: {message}"]
    assert _digest(path) == before


# Corruptions that opening cannot see without reading image data: only --verify finds them.
def _truncate_image_chunk(path: Path) -> None:
    _truncate("data/agentview_image/c/3/0/0/0", 5)(path)


def _nan_in_float_image(path: Path) -> None:
    """A store with a float32 (H, W, C) key, as Diffusion Policy's PushT ``img``, and a NaN in
    it: image keys are not scanned on open."""
    store = EpisodeStore.open(path, "a")
    assert store.is_rgb("agentview_image")
    _replace_array(
        "agentview_image", shape=(5, 4, 4, 3), dtype="float32", chunks=(1, 4, 4, 3), value=9.0
    )(path)
    zarr.open_array(str(path / "data" / "agentview_image"), mode="r+")[2, 1, 1, 0] = np.nan


VERIFY_ONLY = [
    ("truncated-image-chunk", _truncate_image_chunk, "key 'data/agentview_image': unreadable data"),
    (
        "nan-in-float-image",
        _nan_in_float_image,
        "key 'data/agentview_image': non-finite value nan at step 2 (episode 0), index (1, 1, 0)",
    ),
]


@pytest.mark.parametrize(
    ("corrupt", "expected"), [c[1:] for c in VERIFY_ONLY], ids=[c[0] for c in VERIFY_ONLY]
)
def test_verify_reads_every_chunk(template, tmp_path, capsys, corrupt, expected):
    path = tmp_path / "bad.zarr"
    shutil.copytree(template, path)
    corrupt(path)
    before = _digest(path)
    assert main(["dataset", "info", str(path)]) == 0  # the cheap checks cannot see it
    capsys.readouterr()
    with pytest.raises(DatasetError) as info:
        EpisodeStore.open(path).verify()
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert main(["dataset", "info", str(path), "--verify"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [f"error: {info.value}"]
    assert _digest(path) == before


def test_verify_passes_on_a_good_store(template, capsys):
    assert main(["dataset", "info", str(template), "--verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2


def _zip(store: Path, archive: Path, inside: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(store.rglob("*")):
            if p.is_file():
                z.write(p, os.path.join(inside, str(p.relative_to(store))))
    return archive


ZIP_CASES = [
    ("random-bytes-zip", lambda t, a: a.write_bytes(os.urandom(4096)),
     "not a readable .zip archive"),
    ("truncated-zip", lambda t, a: a.write_bytes(_zip(t, a).read_bytes()[:1000]),
     "not a readable .zip archive"),
    ("empty-zip", lambda t, a: a.write_bytes(b""), "not a readable .zip archive"),
    ("zip-with-the-folder-inside", lambda t, a: _zip(t, a, inside="demos.zarr"),
     "the store is inside the folder 'demos.zarr/' of the archive"),
    ("zip-missing-chunk", lambda t, a: _zip_without(t, a, "data/action/c/0/0"),
     "chunk file 'data/action/c/0/0' is missing (steps 0-4 of 5 committed)"),
    ("zip-truncated-array-zarr-json", lambda t, a: _zip_edited(t, a, "data/action/zarr.json"),
     "key 'data/action': unreadable metadata 'data/action/zarr.json'"),
]  # fmt: skip


def _zip_without(template: Path, archive: Path, rel: str) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(template.rglob("*")):
            if p.is_file() and str(p.relative_to(template)) != rel:
                z.write(p, str(p.relative_to(template)))


def _zip_edited(template: Path, archive: Path, rel: str) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(template.rglob("*")):
            if p.is_file():
                name = str(p.relative_to(template))
                z.writestr(name, p.read_bytes()[:20] if name == rel else p.read_bytes())


@pytest.mark.parametrize(
    ("make", "expected"), [c[1:] for c in ZIP_CASES], ids=[c[0] for c in ZIP_CASES]
)
def test_corrupt_zip_store_is_refused_with_one_line(template, tmp_path, capsys, make, expected):
    archive = tmp_path / "demos.zip"
    make(template, archive)
    before = _digest(archive)
    with pytest.raises(DatasetError) as info:
        EpisodeStore.open(archive)
    assert expected in str(info.value) and str(info.value).startswith(f"{archive}: ")
    assert "\n" not in str(info.value)
    assert main(["dataset", "info", str(archive)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {info.value}"]
    assert _digest(archive) == before


def test_good_zip_store_verifies(template, tmp_path):
    archive = _zip(template, tmp_path / "demos.zip")
    with EpisodeStore.open(archive) as store:
        store.verify()
        assert store.episode_ends.tolist() == [3, 5]


def test_format2_array_metadata_truncated(tmp_path, capsys):
    path = tmp_path / "dp.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("data/action", shape=(5, 2), chunks=(5, 2), dtype="float32")[:] = 1.0
    root.create_array("meta/episode_ends", shape=(2,), chunks=(2,), dtype="int64")[:] = [2, 5]
    _truncate("data/action/.zarray", 15)(path)
    before = _digest(path)
    with pytest.raises(DatasetError, match=r"key 'data/action': unreadable metadata "):
        EpisodeStore.open(path)
    assert main(["dataset", "info", str(path)]) == 2
    assert "'data/action/.zarray'" in capsys.readouterr().err
    assert _digest(path) == before


def test_same_verdict_from_every_entry_point(template, tmp_path):
    """`train` (through WindowDataset) and compute_stats refuse what `dataset info` refuses."""
    from ebt_policy.datasets import WindowDataset

    path = tmp_path / "bad.zarr"
    shutil.copytree(template, path)
    _replace_array("action", shape=(5, 2), dtype=str, value="a")(path)
    with pytest.raises(DatasetError) as opened:
        EpisodeStore.open(path)
    for entry in (lambda: WindowDataset(path, ["eef_pos"]), lambda: compute_stats(path)):
        with pytest.raises(DatasetError) as info:
            entry()
        assert str(info.value) == str(opened.value)


def test_all_zero_chunks_are_written(template):
    """The template's frames are all zero (equal to the fill value): zarr would skip them; the
    store writes them, so a missing chunk file always means a lost file."""
    frames = sorted((template / "data" / "agentview_image" / "c").iterdir())
    assert [p.name for p in frames] == ["0", "1", "2", "3", "4"]


def test_uncommitted_trailing_episode_is_kept_out_and_cut_on_append(template, tmp_path, capsys):
    """A writer killed mid-episode leaves rows past the last episode end, maybe with chunks
    missing: reading ignores them (nothing changes on disk); appending cuts them off."""
    path = tmp_path / "demos.zarr"
    shutil.copytree(template, path)
    for key in ("action", "eef_pos", "agentview_image"):
        arr = zarr.open_array(str(path / "data" / key), mode="r+")
        arr.resize((8, *arr.shape[1:]))  # rows 5-7 never written: image chunks 5-7 absent
    before = _digest(path)
    store = EpisodeStore.open(path)
    assert store.n_episodes == 2 and store.n_steps == 5 and store.uncommitted_steps == 3
    store.verify()
    assert main(["dataset", "info", str(path)]) == 0
    assert "3 uncommitted steps" in capsys.readouterr().out
    assert _digest(path) == before
    store = EpisodeStore.open(path, "a")
    assert store.uncommitted_steps == 0
    store.add_episode(_episode(1, 0.25))
    reread = EpisodeStore.open(path)
    assert reread.episode_ends.tolist() == [3, 5, 6]
    assert reread.read("action")[5].tolist() == [0.25, 0.25]


def test_bad_metadata_is_refused_before_anything_is_written(template, tmp_path):
    with pytest.raises(DatasetError, match=r"'action_space.names': expected a list of strings"):
        EpisodeStore.create(tmp_path / "new.zarr", {"action_space": {"names": 3}})
    assert not (tmp_path / "new.zarr").exists()
    path = tmp_path / "demos.zarr"
    shutil.copytree(template, path)
    before = _digest(path)
    store = EpisodeStore.open(path, "a")
    with pytest.raises(DatasetError, match=r"'collection.next_seed': expected an integer"):
        store.update_metadata(collection={"next_seed": "3"})
    names = ("min", "max", "mean", "std", "q01", "q99")
    with pytest.raises(DatasetError, match=r"'stats.action.min': shape \(3,\), expected \(2,\)"):
        store.update_metadata(stats={"action": {n: [0, 0, 0] for n in names}})
    assert _digest(path) == before
