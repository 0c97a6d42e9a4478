"""Where torch keeps its ring attention: the layouts the private-API shim knows."""

import types

import pytest

from longred_pl import _torch_private as shim


def _module(first_parameter: str) -> types.ModuleType:
    module = types.ModuleType("fake_ring")
    exec(
        f"def _templated_ring_attention({first_parameter}, seq_dim, op, q, k, v): pass",
        module.__dict__,
    )
    return module


def _importer(layouts: dict):
    def import_module(name):
        if name not in layouts:
            raise ImportError(name)
        return layouts[name]

    return import_module


def test_this_torch_has_the_layout_the_shim_uses():
    assert shim.locate_ring().__name__ == shim.RING_MODULE


def test_torch_2_11_to_2_13_layout_is_accepted():
    found = shim.locate_ring(_importer({shim.RING_MODULE: _module("group")}))
    assert found._templated_ring_attention.__code__.co_varnames[0] == "group"


def test_torch_2_8_layout_taking_a_mesh_is_refused_by_name():
    with pytest.raises(ImportError, match=r"2.11-2.13.*DeviceMesh \(torch <= 2.8\)"):
        shim.locate_ring(_importer({shim.OLD_RING_MODULE: _module("mesh")}))


def test_a_moved_signature_is_refused():
    with pytest.raises(ImportError, match="takes 'mesh', not a process group"):
        shim.locate_ring(_importer({shim.RING_MODULE: _module("mesh")}))


def test_no_ring_at_all_is_refused():
    with pytest.raises(ImportError, match="no ring attention at all"):
        shim.locate_ring(_importer({}))
