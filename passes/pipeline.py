"""The compile pipeline: the one list that fixes the order of the passes."""

from __future__ import annotations

from evospec.passes.base import Pass
from evospec.passes.build_engines import BuildEngines
from evospec.passes.export_onnx import ExportOnnx
from evospec.passes.finalise import Finalise
from evospec.passes.gather_plans import PlanGathers
from evospec.passes.mass_index import BuildMassIndex
from evospec.passes.parity import CheckParity
from evospec.passes.reservoir import BuildReservoir
from evospec.passes.semantic_index import BuildSemanticIndex
from evospec.passes.split import SplitStages
from evospec.passes.statistical_index import CopyStatisticalIndex
from evospec.passes.validate_inputs import ValidateInputs


def default_passes() -> list[Pass]:
    return [ValidateInputs(), SplitStages(), BuildReservoir(), PlanGathers(), BuildSemanticIndex(), BuildMassIndex(),
            CopyStatisticalIndex(), ExportOnnx(), BuildEngines(),
            CheckParity(), Finalise()]
