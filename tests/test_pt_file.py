"""value_sequence.pt written without torch: torch.load reads the same float64 tensor, safe loading included."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from flarelite.app_opt.p2p.utils.pt_file import save_float64_tensor

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    "values",
    [
        np.arange(5.0),
        np.random.default_rng(0).standard_normal((300, 7)),
        np.zeros((0, 3)),
        np.arange(70_000.0),  # sizes past 16 bits
        [[1.5, -2.0], [3.25, 1e300]],
        np.arange(24, dtype=np.int32).reshape(2, 3, 4)[:, ::2],  # not contiguous, not float64: converted
    ],
)
@pytest.mark.parametrize("weights_only", [True, False])
def test_torch_load_reads_what_was_written(tmp_path, values, weights_only):
    path = tmp_path / "v.pt"
    save_float64_tensor(values, path)
    expected = np.asarray(values, dtype=np.float64)
    got = torch.load(path, weights_only=weights_only)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and tuple(got.shape) == expected.shape
    assert np.array_equal(got.numpy(), expected)


def test_the_file_is_torchs_zip_format_and_writing_it_does_not_import_torch(tmp_path):
    path = tmp_path / "v.pt"
    code = (
        "import sys; from flarelite.app_opt.p2p.utils.pt_file import save_float64_tensor; "
        f"save_float64_tensor([1.0, 2.0], {str(path)!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
    names = zipfile.ZipFile(path).namelist()
    assert {"archive/data.pkl", "archive/data/0", "archive/byteorder", "archive/version"} <= set(names)
    assert torch.equal(torch.load(path), torch.tensor([1.0, 2.0], dtype=torch.float64))
