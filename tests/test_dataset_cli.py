"""`ebt-policy dataset info` on good stores, and one-line errors for every malformed store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from ebt_policy.cli import main
from ebt_policy.datasets import EpisodeStore
from ebt_policy.errors import DatasetError


def _api_store(path) -> EpisodeStore:
    store = EpisodeStore.create(
        path,
        {
            "task": {"name": "lift", "env_kwargs": {}},
            "control_hz": 20,
            "action_space": {"kind": "delta", "low": [-1, -1], "high": [1, 1], "names": ["x", "g"]},
        },
    )
    store.add_episode(
        {
            "action": np.array([[0.5, -1.0], [0.25, 1.0], [-0.75, 1.0]], np.float32),
            "eef_pos": np.zeros((3, 3), np.float32),
            "agentview_image": np.zeros((3, 4, 4, 3), np.uint8),
        }
    )
    store.add_episode(
        {
            "action": np.array([[0.0, -1.0], [2.0, -1.0]], np.float32),
            "eef_pos": np.ones((2, 3), np.float32),
            "agentview_image": np.ones((2, 4, 4, 3), np.uint8),
        }
    )
    return store


def _dp_format2_store(path) -> None:
    """A store in Diffusion Policy's layout, written by zarr's own API in format 2."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("data/action", shape=(5, 2), chunks=(5, 2), dtype="float32")[:] = [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
        [8, 9],
    ]
    root.create_array("data/state", shape=(5, 5), chunks=(5, 5), dtype="float32")[:] = 0.0
    # float32 in [0, 255], as in Diffusion Policy's PushT store
    root.create_array("data/img", shape=(5, 8, 8, 3), chunks=(1, 8, 8, 3), dtype="float32")[:] = 9
    root.create_array("meta/episode_ends", shape=(2,), chunks=(2,), dtype="int64")[:] = [2, 5]


def test_info_on_api_store(tmp_path, capsys):
    path = tmp_path / "demos.zarr"
    _api_store(path)
    assert main(["dataset", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 episodes, 5 steps" in out
    for text in ("agentview_image", "(4, 4, 3)", "uint8", "eef_pos", "float32", "lift", "-0.75"):
        assert text in out

    assert main(["dataset", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["steps"] == 5
    assert info["keys"]["agentview_image"] == {
        "shape": [4, 4, 3],
        "dtype": "uint8",
        "type": "rgb",
        "chunk_steps": 1,
    }
    assert info["keys"]["eef_pos"]["shape"] == [3] and info["keys"]["eef_pos"]["type"] == "low_dim"
    assert info["action_min"] == [-0.75, -1.0]
    assert info["action_max"] == [2.0, 1.0]
    assert info["metadata"]["task"]["name"] == "lift"
    assert info["metadata"]["action_space"]["names"] == ["x", "g"]


def test_info_shortens_long_metadata_lists_but_json_keeps_them(tmp_path, capsys):
    path = tmp_path / "demos.zarr"
    store = _api_store(path)
    store.update_metadata(collection={"kept_seeds": list(range(500))})
    assert main(["dataset", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "500 items in all" in out and "499" in out and " 250," not in out
    assert main(["dataset", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["collection"]["kept_seeds"] == list(range(500))


def test_info_on_dp_format2_store(tmp_path, capsys):
    path = tmp_path / "pusht.zarr"
    _dp_format2_store(path)
    assert main(["dataset", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["zarr_format"] == 2
    assert info["episodes"] == 2 and info["steps"] == 5
    assert info["keys"]["img"]["type"] == "rgb"
    assert info["keys"]["state"] == {
        "shape": [5],
        "dtype": "float32",
        "type": "low_dim",
        "chunk_steps": 5,
    }
    assert info["action_min"] == [0.0, 1.0] and info["action_max"] == [8.0, 9.0]
    assert main(["dataset", "info", str(path)]) == 0
    assert "2 episodes, 5 steps" in capsys.readouterr().out


def _break(path, kind: str) -> str:
    """Make a malformed store at ``path``; returns text its error must contain (key/index)."""
    _api_store(path)
    root = zarr.open_group(str(path), mode="r+")
    if kind == "missing-ends":
        shutil.rmtree(path / "meta" / "episode_ends")
        return "'meta/episode_ends'"
    if kind == "non-increasing":
        root["meta/episode_ends"][:] = [3, 2]
        return "'meta/episode_ends': not increasing at index 1 (2 after 3)"
    if kind == "empty-episode":
        root["meta/episode_ends"][:] = [3, 3]
        return "'meta/episode_ends': episode 1 is empty"
    if kind == "length-mismatch":
        root["data/eef_pos"].resize((4, 3))
        return "'data/eef_pos' has 4 steps but meta/episode_ends[-1] is 5"
    if kind == "nan-action":
        root["data/action"][4, 1] = np.nan
        return "'data/action': non-finite value nan at step 4 (episode 1), index (1,)"
    if kind == "inf-obs":
        root["data/eef_pos"][1, 2] = -np.inf
        return "'data/eef_pos': non-finite value -inf at step 1 (episode 0), index (2,)"
    if kind == "schema-version":
        root.attrs["schema_version"] = 99
        return "'schema_version': unknown schema version 99"
    if kind == "missing-data":
        shutil.rmtree(path / "data")
        return "missing key 'data'"
    if kind == "corrupt-chunk":
        (path / "data" / "action" / "c" / "0" / "0").write_bytes(b"not blosc")
        return "key 'data/action': unreadable data"
    if kind == "not-a-store":
        shutil.rmtree(path)
        path.mkdir()
        (path / "notes.txt").write_text("hi")
        return "not a zarr group"
    raise AssertionError(kind)


MALFORMED = [
    "missing-ends",
    "non-increasing",
    "empty-episode",
    "length-mismatch",
    "nan-action",
    "inf-obs",
    "schema-version",
    "missing-data",
    "corrupt-chunk",
    "not-a-store",
]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_store_gives_one_line_error(tmp_path, capsys, kind):
    path = tmp_path / "bad.zarr"
    expected = _break(path, kind)
    with pytest.raises(DatasetError) as info:
        EpisodeStore.open(path)
    assert str(path) in str(info.value) and expected in str(info.value)

    assert main(["dataset", "info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and expected in lines[0] and str(path) in lines[0]


def test_missing_path_gives_one_line_error(tmp_path, capsys):
    assert main(["dataset", "info", str(tmp_path / "absent.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'absent.zarr'}: no such episode store"]
