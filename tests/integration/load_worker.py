"""One rank of the sharded-loading check (launched by ``test_sharded_loading.py``).

Run as ``python -m torch.distributed.run --nproc_per_node 2 load_worker.py OUT DIR...``.
For each model directory, on a 2-rank FSDP2 mesh and on the flattened (dp=1, cp=2) mesh:
the student and the teacher are built without weights, sharded, filled with this rank's
rows (``models.Placement``), and checked by the load-time logit check; each gathered
parameter and buffer is compared with ``from_pretrained``. Rank 0 writes the largest
difference per model, mesh and tensor kind to ``OUT/loading.json``.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from longred_pl.fsdp import shard_fsdp2
from longred_pl.models import Placement, load_causal_lm, load_config, load_student
from longred_pl.parallel import build_dp_cp_mesh, fsdp_mesh
from longred_pl.rope import extend_rope
from longred_pl.teacher import FrozenTeacher


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        out[name] = value.full_tensor() if hasattr(value, "full_tensor") else value
    return out


def differences(model: torch.nn.Module, reference: torch.nn.Module) -> dict[str, float]:
    ours, theirs = gathered(model), gathered(reference)
    assert ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))
    sharded = sum(hasattr(p, "full_tensor") for p in model.parameters())
    worst = max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours)
    return {"max_abs": worst, "tensors": len(ours), "sharded_parameters": sharded}


def main() -> None:
    out, dirs = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    meshes = {
        "fsdp2": init_device_mesh("cpu", (2,), mesh_dim_names=("data_parallel",)),
        "fsdp2_cp": fsdp_mesh(build_dp_cp_mesh(1, 2, "cpu")),
    }
    results = {}
    for path in dirs:
        teacher_config = load_config(path)
        theta = 4 * float(teacher_config.rope_parameters["rope_theta"])
        student_config = extend_rope(teacher_config, "abf", 256, rope_theta=theta)
        for mesh_name, mesh in meshes.items():
            where = Placement(torch.device("cpu"), lambda m, mesh=mesh: shard_fsdp2(m, mesh))
            student = load_student(path, student_config, "eager", "float32", False, False, where)
            teacher = FrozenTeacher.load(path, teacher_config, "eager", "float32", False, where)
            key = f"{path.rsplit('/', 1)[-1]}/{mesh_name}"
            results[key] = {
                "student": differences(student, load_causal_lm(path, student_config, "eager")),
                "teacher": differences(
                    teacher.model, load_causal_lm(path, teacher_config, "eager")
                ),
            }
    if dist.get_rank() == 0:
        with open(f"{out}/loading.json", "w") as handle:
            json.dump(results, handle, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
