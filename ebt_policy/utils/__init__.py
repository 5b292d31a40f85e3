"""Small helpers every part of the stack shares, each written once: atomic file writes, JSON
conversion of numpy/torch values, device resolution, the MuJoCo GL default and progress bars.

Nothing here imports torch, zarr or a simulator at module import time.
"""

from ebt_policy.utils.device import resolve_device
from ebt_policy.utils.files import atomic_directory, atomic_write_bytes, atomic_write_text
from ebt_policy.utils.gl import default_mujoco_gl
from ebt_policy.utils.jsonable import to_jsonable, write_json_atomic
from ebt_policy.utils.progress import progress_bar

__all__ = [
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_mujoco_gl",
    "progress_bar",
    "resolve_device",
    "to_jsonable",
    "write_json_atomic",
]
