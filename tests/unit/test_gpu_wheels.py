"""The GPU smoke carries exactly the wheels the GPU machine's image lacks."""

from benchmarks.gpu_wheels import IMAGE, header_pins, needed


def test_the_smoke_header_lists_every_missing_package_and_nothing_else():
    missing = needed()
    assert {"webdataset", "braceexpand", "jsonargparse"} <= set(missing)
    assert not set(missing) & IMAGE
    assert header_pins() == missing


def test_packages_the_image_has_are_not_carried():
    assert {"torch", "transformers", "lightning", "torchmetrics", "safetensors"} <= IMAGE
