"""bench/bench_step_parts.py at the demo's shape with one timed call: both patch embeddings agree, both are timed,
both ways of stacking a batch are timed, and both gzip writers compress a demo volume."""

import json

from bench import bench_step_parts


def test_demo_shape_times_both_patch_embeddings_and_both_stackings(tmp_path):
    out = tmp_path / "step_parts.json"
    bench_step_parts.main(["--repeats", "1", "--shapes", "demo", "--out", str(out)])
    result = json.loads(out.read_text())
    row = result["patch_embedding"]["demo"]
    assert list(result["patch_embedding"]) == ["demo"] and row["width"] == 72
    assert row["max_abs_difference"] < 1e-4  # the same Conv3d, summed in another order
    for key in ("matmul_forward", "matmul_forward_weight_grad", "conv_forward", "conv_forward_weight_grad"):
        assert row[key]["best_ms"] > 0
    assert result["stacking"]["torch_stack_new"]["best_ms"] > 0 and result["stacking"]["batch_buffers"]["best_ms"] > 0
    gz = result["compression"]
    assert gz["isal_level_1"]["bytes"] < gz["nifti_bytes"] and gz["zlib_level_1"]["bytes"] < gz["nifti_bytes"]
    assert "load_average_at_end" in result["machine"]
