"""A new layer method is its folder plus one catalog line: nothing else in peftkit changes.

The test copies ``src/peftkit`` to a scratch directory, adds ``methods/scale/`` (a toy method: ``y = W x * s``
with a trainable per-output scale ``s``, initialised to 1) and its line in ``catalog.py``, and checks in a
fresh interpreter that ``PeftType``, the exports, the core (inject, train set, save, load) and the command line's
``--method`` choices and options all pick it up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "peftkit"

CONFIG = '''
"""Toy method config."""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.config import PeftConfig
from peftkit.types import PeftType


@dataclass
class ScaleConfig(PeftConfig):
    """``y = W x * s`` on the target modules."""

    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType("SCALE")
        super().__post_init__()
'''

LAYER = '''
"""Toy method layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.layers.base import AdapterLayer


class ScaleLinear(AdapterLayer):
    """``y = base(x) * s[adapter]``."""

    adapter_layer_names = ("scale_s",)

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.scale_s = nn.ParameterDict()

    def update_layer(self, adapter: str, facts: Any, init_weights: bool = True) -> None:
        self.scale_s[adapter] = nn.Parameter(torch.ones(self.get_base_layer().out_features))

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        return result * self.scale_s[adapter]
'''

METHOD = '''
"""Toy method spec."""

from torch import nn

from peftkit.methods.scale.config import ScaleConfig
from peftkit.methods.scale.layer import ScaleLinear
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.types import PeftType

SCALE = MethodSpec(
    peft_type=PeftType("SCALE"),
    config_class=ScaleConfig,
    model_class_name="ScaleModel",
    prefix="scale_",
    layer_table={nn.Linear: ScaleLinear},
    layer_facts=lambda config, name, module: None,
    public_names={"ScaleConfig": ScaleConfig},
    cli_name="scale",
    cli_options=(CliOption("target_modules", "target_modules", str, "Modules to scale", "all-linear"),),
)
'''

CHECK = """
import copy
import tempfile

import torch
from torch import nn

import peftkit
from peftkit.cli.main import build_parser

assert peftkit.PeftType.SCALE == "SCALE"
model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
x = torch.randn(5, 3)
expected = model(x)
fresh = copy.deepcopy(model)
peft_model = peftkit.get_peft_model(model, peftkit.ScaleConfig(target_modules=["0", "2"]))
assert [n for n, p in peft_model.named_parameters() if p.requires_grad] == [
    "base_model.model.0.scale_s.default", "base_model.model.2.scale_s.default"]
torch.testing.assert_close(peft_model(x), expected)  # s starts at 1
with torch.no_grad():
    for _, p in peft_model.named_parameters():
        if p.requires_grad:
            p.mul_(3.0)
with tempfile.TemporaryDirectory() as d:
    peft_model.save_pretrained(d)
    loaded = peftkit.PeftModel.from_pretrained(fresh, d)
    assert isinstance(loaded.peft_config["default"], peftkit.ScaleConfig)
    torch.testing.assert_close(loaded(x), peft_model(x))
args = build_parser().parse_args(["train", "--method", "scale", "--target-modules", "q_proj"])
assert args.method == "scale" and args.target_modules == "q_proj"
print("ok")
"""


def test_a_new_method_needs_its_folder_and_one_catalog_line(tmp_path: Path) -> None:
    package = tmp_path / "peftkit"
    shutil.copytree(SRC, package, ignore=shutil.ignore_patterns("__pycache__", "data"))
    folder = package / "methods" / "scale"
    folder.mkdir()
    (folder / "__init__.py").write_text('"""Toy method: a trainable scale per output."""\n')
    for name, text in (("config.py", CONFIG), ("layer.py", LAYER), ("method.py", METHOD)):
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    catalog = package / "catalog.py"
    text = catalog.read_text()
    assert text.count("}\n") == 1
    catalog.write_text(text.replace("}\n", '    "SCALE": "peftkit.methods.scale.method:SCALE",\n}\n'))

    run = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
